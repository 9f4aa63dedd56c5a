"""Shared text documents: the worker is the one authority for each open text file (a Yjs/Yrs CRDT).

While a text file is open in a browser it is a CRDT document here (pycrdt, one ``Text`` named
``text``), loaded from the checkout on the first ``doc_open``. Every client's update (Yjs binary update
encoding, base64 on the wire) is applied here and broadcast to every connection subscribed to the
document (each backend relays it to its own browsers), so all editors converge whichever backend they
use. The plain text is written back to the checkout by a file helper (off the event loop), debounced,
so saves, bundles, downloads and publishing keep seeing plain text; a save flushes first. Who edited
since the last save is kept per session (``editors``) for the save's ``Co-authored-by:`` trailers.
The protocol is in docs/protocol-worker.md ("Shared documents").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import posixpath
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pycrdt import Doc, Text

from sagews.worker.protocol import ProtocolError
from sagews.worker.workspace import AUTHOR_RE

if TYPE_CHECKING:
    from sagews.worker.connection import Connection
    from sagews.worker.session import Session

log = logging.getLogger("sagews.worker.docs")
FLUSH_DELAY = 0.3  # s after the last update before the text is written to the checkout
IDLE_UNLOAD = 600.0  # s a document nobody subscribes to stays in memory (reconnects merge into it)
MAX_UPDATE = 8 << 20  # decoded bytes of one update
T = TypeVar("T")


def doc_key(path: object) -> str:
    """The document's key: its normalised path in the checkout (the helper checks it again)."""
    if not isinstance(path, str) or not path or len(path) > 4096 or "\x00" in path:
        raise ProtocolError("bad_field", "path must be a file path")
    norm = posixpath.normpath(path)
    if norm.startswith(("/", "../")) or norm in {".", ".."} or norm.split("/")[0] == ".git":
        raise ProtocolError("path_refused", f"path not allowed: {path[:200]}")
    return norm


def decode(field: str, value: object) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError("bad_field", f"{field} must be a base64 string")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("bad_field", f"{field} is not valid base64") from None
    if len(data) > MAX_UPDATE:
        raise ProtocolError("too_large", f"{field} is larger than {MAX_UPDATE} bytes")
    return data


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class SharedDoc:
    def __init__(self, session: Session, path: str, text: str) -> None:
        self.session = session
        self.path = path
        self.id = uuid.uuid4().hex  # this instance: a client's state vector means something only here
        self.doc = Doc()
        self.text = self.doc.get("text", type=Text)
        if text:
            self.text += text
        self.disk_text = text  # what the checkout has (as far as we wrote or read it)
        self.subscribers: set[Connection] = set()
        self.flush_handle: asyncio.TimerHandle | None = None
        self.flushing: asyncio.Task[None] | None = None
        self.unload_handle: asyncio.TimerHandle | None = None
        self.closed = False
        self.updates = 0
        self.last_update = time.monotonic()

    # the CRDT --------------------------------------------------------------------------------------
    def state(self) -> bytes:
        return self.doc.get_state()

    def diff(self, state_vector: bytes | None) -> bytes:
        return self.doc.get_update(state_vector) if state_vector else self.doc.get_update()

    def apply(self, update: bytes) -> None:
        try:
            self.doc.apply_update(update)
        except ValueError as exc:
            raise ProtocolError("bad_update", f"not a Yjs update: {exc}"[:300]) from None
        self.updates += 1
        self.last_update = time.monotonic()
        self.schedule_flush()

    # subscribers -----------------------------------------------------------------------------------
    def subscribe(self, conn: Connection) -> None:
        self.subscribers.add(conn)
        if self.unload_handle is not None:
            self.unload_handle.cancel()
            self.unload_handle = None

    def unsubscribe(self, conn: Connection) -> None:
        self.subscribers.discard(conn)
        if not self.subscribers and self.unload_handle is None and not self.closed:
            loop = asyncio.get_running_loop()
            self.unload_handle = loop.call_later(IDLE_UNLOAD, self._maybe_unload)

    def broadcast(self, frame: dict[str, Any]) -> None:
        for conn in list(self.subscribers):
            if conn.closed:
                self.subscribers.discard(conn)
            else:
                conn.send(frame)

    def _maybe_unload(self) -> None:
        self.unload_handle = None
        if not self.subscribers and not self.closed:
            self.session.worker.spawn_task(self.session.docs.unload(self.path))

    # the checkout ----------------------------------------------------------------------------------
    def schedule_flush(self) -> None:
        if self.flush_handle is None and not self.closed:
            loop = asyncio.get_running_loop()
            self.flush_handle = loop.call_later(FLUSH_DELAY, self._flush_soon)

    def _flush_soon(self) -> None:
        self.flush_handle = None
        if self.flushing is None or self.flushing.done():
            self.flushing = asyncio.get_running_loop().create_task(self._flush())
        else:
            self.schedule_flush()  # one write at a time; the next one follows

    async def flush(self) -> None:
        """Write the current text now (a save calls this first); waits for a write in flight."""
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        while self.flushing is not None and not self.flushing.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flushing)
        self.flushing = asyncio.get_running_loop().create_task(self._flush())
        await asyncio.shield(self.flushing)

    async def _flush(self) -> None:
        while not self.closed:
            text = str(self.text)
            if text == self.disk_text:
                return
            try:
                await self.session.settled()
                await self.session.op("write", {"path": self.path, "text": text})
            except Exception as exc:  # the text stays in memory; the next update or save tries again
                log.warning("writing shared document %s of %s failed: %s", self.path, self.session.id, exc)
                return
            self.disk_text = text
            self.session.schedule_quota_check()

    async def retire(self, reason: str) -> None:
        """The file was renamed or deleted (or the session ends): stop writing it, tell subscribers."""
        self.closed = True
        for handle in (self.flush_handle, self.unload_handle):
            if handle is not None:
                handle.cancel()
        if self.flushing is not None and not self.flushing.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flushing)
        self.broadcast({"type": "doc_closed", "session": self.session.id, "path": self.path,
                        "doc": self.id, "reason": reason})  # fmt: skip
        self.subscribers.clear()


class SessionDocs:
    """The shared documents of one session, by path; and who edited them since the last save."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.docs: dict[str, SharedDoc] = {}
        self.loading: dict[str, asyncio.Future[SharedDoc]] = {}
        self.editors: dict[str, None] = {}  # account names in order of their first edit since the save

    async def get(self, path: str) -> SharedDoc:
        doc = self.docs.get(path)
        if doc is not None:
            return doc
        fut = self.loading.get(path)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self.loading[path] = fut
        try:
            doc = await self._load(path)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: the waiters re-raise it
            raise
        finally:
            self.loading.pop(path, None)
        self.docs[path] = doc
        fut.set_result(doc)
        return doc

    async def _load(self, path: str) -> SharedDoc:
        session = self.session
        await session.settled()
        try:
            res = await session.op("read", {"path": path})
        except Exception as exc:
            if getattr(exc, "code", None) != "not_found":
                raise
            res = {"text": ""}  # a new file: it is created by the first flush
        if "text" not in res:
            raise ProtocolError("not_text", f"{path} is not a UTF-8 text file")
        return SharedDoc(session, path, str(res["text"]))

    def loaded(self, path: str) -> SharedDoc:
        doc = self.docs.get(path)
        if doc is None:
            raise ProtocolError("not_open", f"{path} is not open as a shared document (doc_open first)")
        return doc

    def edited_by(self, author: object) -> None:
        if isinstance(author, str) and AUTHOR_RE.match(author):
            self.editors.setdefault(author, None)

    async def flush_all(self) -> None:
        for doc in list(self.docs.values()):
            await doc.flush()

    async def unload(self, path: str) -> None:
        doc = self.docs.get(path)
        if doc is None or doc.subscribers:
            return
        with contextlib.suppress(Exception):
            await doc.flush()
        if not doc.subscribers and self.docs.get(path) is doc:
            del self.docs[path]
            doc.closed = True

    async def rewrite(self, path: str, write: Callable[[], Awaitable[T]]) -> T:
        """A plain ``write`` of a file that is open as a shared document: the document stops writing,
        the file is written, then the document ends (``doc_closed``, reason ``write``) and the next
        ``doc_open`` loads the new text as a new instance (clients reset to it). The worker never edits
        a document itself: pycrdt 0.14 encodes an edit made on the Python side after non-ASCII text at
        a position Yjs reads differently (checked against yjs 13.6: tests/worker/test_worker_docs.py)."""
        try:
            key = doc_key(path)
        except ProtocolError:
            return await write()
        doc = self.docs.get(key)
        if doc is None:
            return await write()
        doc.closed = True  # no flush of the old text lands after the write
        if doc.flush_handle is not None:
            doc.flush_handle.cancel()
            doc.flush_handle = None
        if doc.flushing is not None and not doc.flushing.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(doc.flushing)
        try:
            return await write()
        finally:
            if self.docs.get(key) is doc:
                del self.docs[key]
            await doc.retire("write")

    async def moved(self, path: str, reason: str) -> None:
        """``path`` (or a directory holding open documents) was renamed or deleted."""
        path = posixpath.normpath(path)
        for key in [k for k in self.docs if k == path or k.startswith(path.rstrip("/") + "/")]:
            doc = self.docs.pop(key)
            await doc.retire(reason)

    def drop_connection(self, conn: Connection) -> None:
        for doc in self.docs.values():
            if conn in doc.subscribers:
                doc.unsubscribe(conn)

    async def close(self) -> None:
        for doc in list(self.docs.values()):
            with contextlib.suppress(Exception):
                await doc.flush()
            await doc.retire("session closed")
        self.docs.clear()
