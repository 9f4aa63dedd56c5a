"""Links from a backend to its compute workers (docs/protocol-worker.md), asyncio, non-blocking.

One mutual-TLS connection per worker carries every request of this backend, multiplexed by id.
``WorkerLink.call`` sends a request and returns its final frame; intermediate frames (``stream``,
``display``, ``result``, ``exception``) go to the caller's ``on_frame`` callback as they arrive.
``WorkerPool`` keeps the links, polls ``status`` as the heartbeat, writes it to the ``workers`` table
and picks the least-loaded healthy worker for a new placement.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from sagews.db import Database
from sagews.db.models import Worker, WorkerState
from sagews.db.types import utcnow
from sagews.framing import DEFAULT_MAX_FRAME, FrameError, encode, read_frame
from sagews.tls import client_context

log = logging.getLogger("sagews.backend.workers")
NON_FINAL = frozenset({"stream", "display", "result", "exception"})
# final frames also handed to the request's on_frame, in the read loop: a terminal's attachment is in
# place before the next frame (its first output) is read (sagews/backend/terminals.py); a shared
# document's subscription before its next update (sagews/backend/docs.py)
SYNC_FINAL = frozenset({"term_opened", "term_attached", "doc_opened"})
FrameCallback = Callable[[dict[str, Any]], None]


class WorkerUnavailable(Exception):
    """The worker could not be reached or dropped the connection mid-request."""


class WorkerLink:
    def __init__(
        self,
        worker_id: int,
        address: str,
        port: int,
        ssl_ctx: ssl.SSLContext,
        on_unsolicited: Callable[[WorkerLink, dict[str, Any]], None] | None = None,
    ) -> None:
        self.id = worker_id
        self.capacity = 100
        self.draining = False  # set by an operator (workers.state): keeps its sessions, gets no new ones
        self.address = address
        self.port = port
        self.ssl_ctx = ssl_ctx
        self.on_unsolicited = on_unsolicited
        self.ids = itertools.count(1)
        self.pending: dict[int, tuple[asyncio.Future[dict[str, Any]], FrameCallback | None]] = {}
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task[None] | None = None
        self.connecting: asyncio.Lock = asyncio.Lock()
        self.max_frame = DEFAULT_MAX_FRAME
        self.status: dict[str, Any] = {}
        self.last_ok = 0.0  # monotonic time of the last successful status
        self.last_frame = 0.0  # monotonic time of the last frame of any kind from the worker
        self.healthy = False
        self.fresh = False  # the last heartbeat got a status
        self.shutting_down = False

    @property
    def connected(self) -> bool:
        return self.writer is not None and not self.writer.is_closing()

    async def connect(self) -> None:
        async with self.connecting:
            if self.connected:
                return
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        self.address, self.port, ssl=self.ssl_ctx, server_hostname=self.address
                    ),
                    timeout=5,
                )
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                raise WorkerUnavailable(f"worker {self.address}:{self.port}: {exc}") from exc
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.writer = writer
            self.shutting_down = False
            self.reader_task = asyncio.ensure_future(self._read_loop(reader, writer))
            hello = await self._send({"type": "hello", "versions": [1]}, None, timeout=10)
            if hello.get("type") != "hello":
                self._drop(writer, f"hello refused: {hello}")
                raise WorkerUnavailable(f"worker {self.address}:{self.port}: hello refused")
            self.max_frame = int(hello.get("max_frame") or DEFAULT_MAX_FRAME)

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reason = "connection closed"
        try:
            while True:
                msg = await read_frame(reader, max(self.max_frame, DEFAULT_MAX_FRAME) * 2)
                if msg is None:
                    break
                self.last_frame = time.monotonic()
                re_ = msg.get("re")
                entry = self.pending.get(re_) if isinstance(re_, int) else None
                if entry is None:
                    if msg.get("type") == "shutdown":
                        self.shutting_down = True
                        self.healthy = False
                    if self.on_unsolicited is not None:
                        self.on_unsolicited(self, msg)
                    continue
                fut, on_frame = entry
                if msg.get("type") in NON_FINAL:
                    if on_frame is not None:
                        try:
                            on_frame(msg)
                        except Exception:
                            log.exception("frame callback failed")
                    continue
                self.pending.pop(re_, None)
                if on_frame is not None and msg.get("type") in SYNC_FINAL:
                    try:
                        on_frame(msg)
                    except Exception:
                        log.exception("frame callback failed")
                if not fut.done():
                    fut.set_result(msg)
        except (OSError, asyncio.IncompleteReadError, FrameError, ssl.SSLError) as exc:
            reason = str(exc) or type(exc).__name__
        finally:
            self._drop(writer, reason)

    def _drop(self, writer: asyncio.StreamWriter, reason: str) -> None:
        if self.writer is writer:
            self.writer = None
            self.healthy = False
        writer.close()
        pending, self.pending = self.pending, {}
        for fut, _ in pending.values():
            if not fut.done():
                fut.set_exception(WorkerUnavailable(f"worker {self.address}:{self.port}: {reason}"))

    async def _send(
        self,
        msg: dict[str, Any],
        on_frame: FrameCallback | None,
        timeout: float | None,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        writer = self.writer
        if writer is None or writer.is_closing():
            raise WorkerUnavailable(f"worker {self.address}:{self.port}: not connected")
        req_id = next(self.ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[req_id] = (fut, on_frame)
        writer.write(encode({**msg, "id": req_id}))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout) if timeout else await fut
        except TimeoutError:
            self.pending.pop(req_id, None)
            raise WorkerUnavailable(f"worker {self.address}:{self.port}: no reply in {timeout} s") from None

    async def call(
        self,
        kind: str,
        on_frame: FrameCallback | None = None,
        timeout: float | None = 120.0,  # noqa: ASYNC109
        **fields: Any,
    ) -> dict[str, Any]:
        """Send one request, return its final frame (``error`` frames are returned, not raised)."""
        if not self.connected:
            await self.connect()
        return await self._send({"type": kind, **fields}, on_frame, timeout)

    async def heartbeat(self, grace: float = 15.0) -> bool:
        """One ``status``. A worker that is still connected but slow to answer stays healthy for
        ``grace`` seconds after its last good status (so a busy worker's workspaces are not reopened
        elsewhere while it still runs them); an unreachable one is down at once."""
        self.fresh = False
        try:
            st = await self.call("status", timeout=5)
        except WorkerUnavailable:
            # a status stuck behind a burst of requests is not a dead worker: it is alive while any
            # frame keeps arriving (its loop answers), and down once nothing came for ``grace``
            now = time.monotonic()
            recent = max(self.last_ok, self.last_frame)
            self.healthy = self.connected and self.last_ok > 0 and now - recent < grace
            return self.healthy
        if st.get("type") != "status":
            self.healthy = False
            return False
        self.status = st
        self.fresh = True
        self.last_ok = time.monotonic()
        self.healthy = not st.get("stopping") and not self.shutting_down
        return self.healthy

    async def close(self) -> None:
        writer = self.writer
        if writer is not None:
            self._drop(writer, "closed by backend")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5)
        if self.reader_task is not None:
            self.reader_task.cancel()
            with contextlib.suppress(BaseException):
                await self.reader_task


# --- DB functions --------------------------------------------------------------------------------


def register_worker(s: Session, address: str, port: int, capacity: int) -> int:
    w = s.scalar(select(Worker).where(Worker.address == address, Worker.port == port))
    if w is None:
        w = Worker(address=address, port=port, capacity=capacity, state=WorkerState.down)
        s.add(w)
        s.flush()
    else:
        w.capacity = capacity
    return w.id


def list_workers(s: Session) -> list[dict[str, Any]]:
    return [
        {
            "id": w.id,
            "address": w.address,
            "port": w.port,
            "capacity": w.capacity,
            "state": str(w.state),
            "load": w.load,
            "heartbeat": w.heartbeat.isoformat() if w.heartbeat else None,
            "version": w.version,
        }
        for w in s.scalars(select(Worker).order_by(Worker.id))
    ]


def _record(s: Session, worker_id: int, up: bool, load: float, version: str | None, *, beat: bool) -> None:
    w = s.get(Worker, worker_id)
    if w is None:
        return
    if w.state != WorkerState.draining:
        w.state = WorkerState.up if up else WorkerState.down
    w.load = load
    if beat:
        w.heartbeat = utcnow()
    if version:
        w.version = version[:64]


class WorkerPool:
    def __init__(
        self, db: Database, cert: str | None, key: str | None, ca: str | None, grace: float = 15.0
    ) -> None:
        self.db = db
        self.grace = grace
        self.ssl_ctx = client_context(cert, key, ca) if ca else None
        self.links: dict[int, WorkerLink] = {}
        self.on_unsolicited: Callable[[WorkerLink, dict[str, Any]], None] | None = None
        self.on_down: Callable[[WorkerLink], None] | None = None
        self.on_beat: Callable[[], Awaitable[Any]] | None = None  # after each heartbeat round
        self._task: asyncio.Task[None] | None = None
        self._beating: asyncio.Future[None] | None = None
        self.placed: dict[int, int] = {}  # worker id -> workspaces this backend placed since the last beat

    async def load_from_db(self) -> None:
        rows = await self.db.run(list_workers)
        for row in rows:
            if row["id"] not in self.links and self.ssl_ctx is not None:
                self.links[row["id"]] = WorkerLink(
                    row["id"], row["address"], row["port"], self.ssl_ctx, self._unsolicited
                )
            if row["id"] in self.links:
                self.links[row["id"]].capacity = row["capacity"]
                self.links[row["id"]].draining = row["state"] == "draining"

    def _unsolicited(self, link: WorkerLink, msg: dict[str, Any]) -> None:
        if self.on_unsolicited is not None:
            self.on_unsolicited(link, msg)

    async def add(self, address: str, port: int, capacity: int = 100) -> WorkerLink:
        wid = await self.db.run(register_worker, address, port, capacity)
        await self.load_from_db()
        return self.links[wid]

    async def beat_once(self) -> None:
        await self.load_from_db()
        links = list(self.links.values())
        results = await asyncio.gather(*(link.heartbeat(self.grace) for link in links))
        for link, ok in zip(links, results, strict=True):
            self.placed.pop(link.id, None)  # the status now counts the sessions placed meanwhile
            st = link.status
            sessions = int(st.get("sessions", 0) or 0) if ok else 0
            await self.db.run(
                _record,
                link.id,
                ok,
                sessions / max(1, link.capacity) if ok else 0.0,
                st.get("version") if ok else None,
                beat=link.fresh,
            )
            if not ok and self.on_down is not None:
                self.on_down(link)
        if self.on_beat is not None and any(link.draining for link in links):
            await self.on_beat()

    async def beat_now(self) -> None:
        """A heartbeat round now, shared by every caller that asks while one is running."""
        if self._beating is None or self._beating.done():
            self._beating = asyncio.ensure_future(self.beat_once())
        await asyncio.shield(self._beating)

    async def run(self, interval: float) -> None:
        while True:
            try:
                await self.beat_once()
            except Exception:
                log.exception("heartbeat round failed")
            await asyncio.sleep(interval)

    def start(self, interval: float) -> None:
        self._task = asyncio.ensure_future(self.run(interval))

    def healthy(self) -> list[WorkerLink]:
        return [link for link in self.links.values() if link.healthy]

    def pick(self, exclude: set[int] | None = None) -> WorkerLink | None:
        """The least-loaded healthy worker (sessions reported at the last beat + placed since)."""
        candidates = [
            link for link in self.healthy() if not link.draining and (not exclude or link.id not in exclude)
        ]
        if not candidates:
            return None

        def load(link: WorkerLink) -> float:
            return float(link.status.get("sessions", 0) or 0) + self.placed.get(link.id, 0)

        best = min(candidates, key=load)
        self.placed[best.id] = self.placed.get(best.id, 0) + 1
        return best

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        for link in self.links.values():
            await link.close()
        self.links.clear()
