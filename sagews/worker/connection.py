"""One client connection: framed JSON requests in, replies out; the request handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any

from sagews import __version__
from sagews.framing import HEADER, FrameError, decode_body, encode
from sagews.tls import peer_common_name
from sagews.worker import docs as docs_mod
from sagews.worker import terminal as term_mod
from sagews.worker.protocol import FRAME_BODY_TIMEOUT, MAX_IN_FLIGHT, PROTOCOL_VERSIONS, ProtocolError
from sagews.worker.session import Execution, Session
from sagews.worker.workspace import OpError

if TYPE_CHECKING:
    from sagews.worker.worker import Worker

log = logging.getLogger("sagews.worker")


class Connection:
    def __init__(self, worker: Worker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.worker = worker
        self.reader = reader
        self.writer = writer
        self.version: int | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sslobj = writer.get_extra_info("ssl_object")
        self.peer = peer_common_name(sslobj) if sslobj is not None else None

    def send(self, msg: dict[str, Any], before: dict[str, Any] | None = None) -> None:
        if self.closed:
            return
        transport = self.writer.transport
        if transport.is_closing():
            self.closed = True
            return
        if transport.get_write_buffer_size() > 4 * self.worker.config.max_frame + (64 << 20):
            log.warning("client %s does not read its replies: closing", self.peer)
            self.close()
            return
        self.writer.write(encode(msg) if before is None else encode(before) + encode(msg))

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(Exception):
            self.writer.close()

    def error(self, req_id: Any, code: str, message: str) -> None:
        self.send({"type": "error", "re": req_id, "code": code, "message": message})

    async def run(self) -> None:
        max_frame = self.worker.config.max_frame
        try:
            while not self.closed:
                try:
                    msg = await self.read_request(max_frame)
                except FrameError as exc:
                    self.error(None, exc.code, exc.message)
                    if exc.code in {"too_large", "timeout"}:
                        break  # the body was not read: the stream cannot be resynchronised
                    continue
                if msg is None:
                    break
                self.dispatch(msg)
                await self.writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.drain(), 1)
            self.close()
            for session in list(self.worker.sessions.values()):  # this client's terminals stay, detached
                for term in session.terminals.values():
                    term.subscribers.discard(self)
                session.docs.drop_connection(self)

    async def read_request(self, max_frame: int) -> dict[str, Any] | None:
        """sagews.framing.read_frame, plus: a started frame must be complete within FRAME_BODY_TIMEOUT."""
        try:
            header = await self.reader.readexactly(HEADER.size)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return None
            raise
        (length,) = HEADER.unpack(header)
        if length > max_frame:
            raise FrameError("too_large", f"frame of {length} bytes exceeds the limit of {max_frame}")
        try:
            body = await asyncio.wait_for(self.reader.readexactly(length), FRAME_BODY_TIMEOUT)
        except TimeoutError:
            raise FrameError("timeout", f"frame body not received within {FRAME_BODY_TIMEOUT} s") from None
        return decode_body(body)

    def dispatch(self, msg: dict[str, Any]) -> None:
        req_id = msg.get("id")
        if (
            not isinstance(req_id, (int, str))
            or isinstance(req_id, bool)
            or (isinstance(req_id, str) and len(req_id) > 128)
            or (isinstance(req_id, int) and abs(req_id) > 2**53)
        ):
            self.error(
                None, "bad_message", "every request needs an id: an integer or a string of <= 128 chars"
            )
            return
        kind = msg.get("type")
        if not isinstance(kind, str):
            self.error(req_id, "bad_message", "every request needs a type (string)")
            return
        if self.version is None and kind != "hello":
            self.error(req_id, "hello_required", "send hello first")
            return
        handler = getattr(self, f"do_{kind}", None) if kind.isidentifier() and kind.islower() else None
        if handler is None:
            self.error(req_id, "unknown_type", f"unknown request type {kind[:64]!r}")
            return
        if self.worker.stopping and kind not in {"hello", "status"}:
            self.error(req_id, "shutting_down", "the worker is shutting down")
            return
        if len(self.tasks) >= MAX_IN_FLIGHT and kind not in {"hello", "status"}:
            self.error(req_id, "busy", f"{MAX_IN_FLIGHT} requests of this connection are in progress")
            return
        task = asyncio.get_running_loop().create_task(self._handle(handler, req_id, msg))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handle(self, handler: Any, req_id: Any, msg: dict[str, Any]) -> None:
        try:
            reply = await handler(req_id, msg)
            if reply is not None:
                reply.setdefault("re", req_id)
                before = reply.pop("_before", None)
                self.send(reply, before=before)
        except ProtocolError as exc:
            self.error(req_id, exc.code, exc.message)
        except OpError as exc:
            self.error(req_id, exc.code, exc.message)
        except Exception as exc:
            log.exception("request %r failed", msg.get("type"))
            self.error(req_id, "internal", f"{type(exc).__name__}: {exc}"[:500])

    # handlers ----------------------------------------------------------------------------------
    async def do_hello(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        versions = msg.get("versions")
        if not isinstance(versions, list) or not all(isinstance(v, int) for v in versions):
            raise ProtocolError("bad_field", "versions must be a list of integers")
        common = set(versions) & set(PROTOCOL_VERSIONS)
        if not common:
            raise ProtocolError(
                "bad_version", f"no common protocol version; this worker speaks {PROTOCOL_VERSIONS}"
            )
        self.version = max(common)
        return {
            "type": "hello",
            "version": self.version,
            "server": f"sagews-worker {__version__}",
            "engines": self.worker.engines,
            "max_frame": self.worker.config.max_frame,
            "peer": self.peer,
        }

    async def do_status(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        return {"type": "status", **self.worker.status()}

    async def do_open(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        t0 = time.monotonic()
        session, existing = await self.worker.open_session(
            msg.get("workspace"), msg.get("engine"), msg.get("owner")
        )
        return {
            "type": "opened",
            "session": session.id,
            "workspace": session.workspace,
            "engine": session.engine_name,
            "user": session.account.name,
            "existing": existing,
            "elapsed": round(time.monotonic() - t0, 6),
        }

    async def do_exec(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session = self.worker.session(msg.get("session"))
        code = msg.get("code")
        if not isinstance(code, str):
            raise ProtocolError("bad_field", "code must be a string")
        engine = msg.get("engine", session.engine_name)
        self.worker.check_engine(engine)
        return await session.execute(self, req_id, code, str(engine))

    async def do_interrupt(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session = self.worker.session(msg.get("session"))
        session.interrupt()
        return {"type": "ok", "session": session.id}

    async def do_kill(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session = self.worker.session(msg.get("session"))
        session.kill("killed on request")
        await session.kill_all()
        return {"type": "ok", "session": session.id}

    async def do_restart(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session = self.worker.session(msg.get("session"))
        await session.settled()  # a restore's checkout starts the engine itself when it is done
        await session.restart()
        return {"type": "ok", "session": session.id}

    async def do_close(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session = self.worker.session(msg.get("session"))
        await self.worker.close_session(session, "closed on request")
        return {"type": "ok", "session": session.id}

    async def _file_op(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session = self.worker.session(msg.get("session"))
        kind = str(msg["type"])
        if kind == "write" and session.over_quota:
            raise ProtocolError("quota", "disk quota exceeded: delete files first")
        args = {k: v for k, v in msg.items() if k not in {"type", "id", "session"} and not k.startswith("_")}
        staged = session.staged
        if staged is not None and kind in {"ls", "read"}:
            args["_staged"] = staged  # files still being checked out: answer from the staged commit
            session.staged_readers += 1
            session.no_staged_readers.clear()
            try:
                res = await session.op(kind, args)
            finally:
                session.staged_readers -= 1
                if not session.staged_readers:
                    session.no_staged_readers.set()
        else:
            await session.settled()
            if kind in {"rename", "delete"}:  # an open shared document of that path ends first
                await session.docs.moved(str(args.get("src" if kind == "rename" else "path", "")), kind)
            if kind == "write":  # an open shared document of that path ends with the write
                res = await session.docs.rewrite(args.get("path"), lambda: session.op(kind, args))
            else:
                res = await session.op(kind, args)
        if kind in {"write", "rename", "delete"}:
            session.last = session.last or Execution(
                self, req_id, session.id, asyncio.get_running_loop().create_future()
            )
            session.schedule_quota_check(now=True)
        return {"type": kind, "session": session.id, **res}

    do_ls = do_read = do_write = do_rename = do_delete = do_history = _file_op

    # shared documents (sagews/worker/docs.py) --------------------------------------------------------
    async def do_doc_open(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session = self.worker.session(msg.get("session"))
        path = docs_mod.doc_key(msg.get("path"))
        client_doc = msg.get("doc")
        state = msg.get("state")
        sv = docs_mod.decode("state", state) if state is not None else None
        doc = await session.docs.get(path)
        same = isinstance(client_doc, str) and client_doc == doc.id
        # subscribed and the snapshot taken in one step: nothing broadcast afterwards is missed
        doc.subscribe(self)
        return {
            "type": "doc_opened",
            "session": session.id,
            "path": path,
            "doc": doc.id,
            "update": docs_mod.b64(doc.diff(sv if same else None)),
            "state": docs_mod.b64(doc.state()),
            "reset": client_doc is not None and not same,
        }

    async def do_doc_update(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session = self.worker.session(msg.get("session"))
        doc = session.docs.loaded(docs_mod.doc_key(msg.get("path")))
        if session.over_quota:
            raise ProtocolError("quota", "disk quota exceeded: delete files first")
        raw = msg.get("update")
        update = docs_mod.decode("update", raw)
        doc.apply(update)
        session.docs.edited_by(msg.get("author"))
        frame = {"type": "doc_update", "session": session.id, "path": doc.path, "doc": doc.id, "update": raw}
        origin = msg.get("origin")
        if isinstance(origin, str) and len(origin) <= 128:
            frame["origin"] = origin
        doc.broadcast(frame)
        return {"type": "ok", "session": session.id, "path": doc.path, "doc": doc.id}

    async def do_doc_awareness(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session = self.worker.session(msg.get("session"))
        doc = session.docs.loaded(docs_mod.doc_key(msg.get("path")))
        raw = msg.get("update")
        docs_mod.decode("update", raw)
        frame = {"type": "doc_awareness", "session": session.id, "path": doc.path, "doc": doc.id,
                 "update": raw}  # fmt: skip
        origin = msg.get("origin")
        if isinstance(origin, str) and len(origin) <= 128:
            frame["origin"] = origin
        doc.broadcast(frame)
        return {"type": "ok", "session": session.id, "path": doc.path}

    async def do_doc_close(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session = self.worker.session(msg.get("session"))
        path = docs_mod.doc_key(msg.get("path"))
        doc = session.docs.docs.get(path)
        if doc is not None:
            doc.unsubscribe(self)
        return {"type": "ok", "session": session.id, "path": path}

    async def do_save(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session = self.worker.session(msg.get("session"))
        author = msg.get("author")
        if author is not None and not isinstance(author, str):
            raise ProtocolError("bad_field", "author must be a string")
        res = await self.worker.save(session, msg.get("message"), author)
        return {"type": "saved", "session": session.id, **res}

    async def do_restore(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session = self.worker.session(msg.get("session"))
        res = await self.worker.restore(session, msg.get("bundles"))
        return {"type": "restored", "session": session.id, **res}

    async def do_complete(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session = self.worker.session(msg.get("session"))
        code, cursor = msg.get("code"), msg.get("cursor")
        if not isinstance(code, str) or len(code) > 100_000:
            raise ProtocolError("bad_field", "code must be a string of at most 100000 characters")
        if cursor is None:
            cursor = len(code)
        if not isinstance(cursor, int) or isinstance(cursor, bool) or not 0 <= cursor <= len(code):
            raise ProtocolError("bad_field", "cursor must be an offset into code (0 to its length)")
        engine = msg.get("engine", session.engine_name)
        self.worker.check_engine(engine)
        return await session.complete(self, req_id, code, cursor, str(engine))

    # terminals (sagews/worker/terminal.py) ------------------------------------------------------
    def _terminal(self, msg: dict[str, Any]) -> tuple[Session, term_mod.Terminal]:
        session = self.worker.session(msg.get("session"))
        tid = msg.get("terminal")
        if not isinstance(tid, str):
            raise ProtocolError("bad_field", "terminal must be a terminal id string")
        term = session.terminals.get(tid)
        if term is None or not term.alive:
            raise ProtocolError("not_found", f"no such terminal: {tid[:80]}")
        return session, term

    async def do_term_open(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session = self.worker.session(msg.get("session"))
        rows, cols = term_mod.check_size(msg.get("rows", 24), msg.get("cols", 80))
        term = await term_mod.open_terminal(session, rows, cols)
        term.subscribers.add(self)
        return {"type": "term_opened", "session": session.id, "user": session.account.name, **term.info()}

    async def do_term_attach(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session, term = self._terminal(msg)
        term.subscribers.add(self)
        return {"type": "term_attached", "session": session.id, "replay": term.scroll, **term.info()}

    async def do_term_detach(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session, term = self._terminal(msg)
        term.subscribers.discard(self)
        return {"type": "ok", "session": session.id, "terminal": term.id}

    async def do_term_input(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session, term = self._terminal(msg)
        data = msg.get("data")
        if not isinstance(data, str) or len(data) > term_mod.MAX_INPUT:
            raise ProtocolError("bad_field", f"data must be a string of <= {term_mod.MAX_INPUT} characters")
        term.write(data)
        return {"type": "ok", "session": session.id, "terminal": term.id}

    async def do_term_resize(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session, term = self._terminal(msg)
        term.resize(*term_mod.check_size(msg.get("rows"), msg.get("cols")))
        return {"type": "ok", "session": session.id, "terminal": term.id}

    async def do_term_close(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session, term = self._terminal(msg)
        term.close()
        return {"type": "ok", "session": session.id, "terminal": term.id}

    async def do_term_list(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session = self.worker.session(msg.get("session"))
        return {"type": "terminals", "session": session.id,
                "terminals": [t.info() for t in session.terminals.values() if t.alive]}  # fmt: skip
