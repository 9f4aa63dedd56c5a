"""The client protocol over SockJS (docs/protocol-client.md).

One ``LiveConnection`` per browser connection. Authentication is the session cookie (checked when
the connection opens; code 4001 closes it when there is none) plus the CSRF token in ``hello`` and
an Origin check. Each request is handled in its own task, so an ``interrupt`` overtakes a running
``exec``. Every request is authorised by the caller's current role in the workspace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import posixpath
import secrets
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sockjs.tornado import SockJSConnection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SATimeoutError

from sagews import notebook
from sagews.backend.accounts import User, hash_token
from sagews.backend.handlers.base import lookup_user
from sagews.backend.limits import HEAVY, Account, TokenBucket
from sagews.backend.terminals import TERMINAL_ROLES
from sagews.backend.workers import WorkerUnavailable
from sagews.backend.workspaces import WorkspaceError, check_id, db_members, db_unpublish

if TYPE_CHECKING:
    from sagews.backend.app import BackendApp

log = logging.getLogger("sagews.backend.live")
PROTOCOL_VERSIONS = (1,)
READ_OPS = frozenset({"ls", "read", "history"})
WRITE_OPS = frozenset(
    {"write", "rename", "delete", "exec", "interrupt", "restart", "doc_update", "doc_awareness"}
)
# fields relayed to the worker per request type (anything else is dropped, never forwarded)
RELAY_FIELDS: dict[str, tuple[str, ...]] = {
    "ls": ("path",),
    "read": ("path", "commit"),
    "history": ("limit",),
    "write": ("path", "text", "b64"),
    "rename": ("src", "dst"),
    "delete": ("path",),
    "exec": ("code", "engine"),
    "interrupt": (),
    "restart": (),
    # terminals (sagews/backend/terminals.py) and completion: owners and editors only
    "term_open": ("rows", "cols"),
    "term_attach": ("terminal",),
    "term_detach": ("terminal",),
    "term_input": ("terminal", "data"),
    "term_resize": ("terminal", "rows", "cols"),
    "term_close": ("terminal",),
    "term_list": (),
    "complete": ("code", "cursor", "engine"),
    # shared text documents (sagews/backend/docs.py, docs/protocol-client.md "Shared documents")
    "doc_open": ("path", "state", "doc"),
    "doc_update": ("path", "update"),
    "doc_awareness": ("path", "update"),
    "doc_close": ("path",),
}
TERMINAL_OPS = frozenset({k for k in RELAY_FIELDS if k.startswith("term_")} | {"complete"})
DOC_OPS = frozenset(k for k in RELAY_FIELDS if k.startswith("doc_"))
MAX_ID = 2**53
# the type of each relayed field (anything else: bad_field before it reaches a worker)
FIELD_TYPES: dict[str, type] = {
    "path": str, "commit": str, "text": str, "b64": str, "src": str, "dst": str,
    "code": str, "engine": str, "limit": int, "terminal": str, "data": str, "rows": int, "cols": int,
    "cursor": int, "state": str, "doc": str, "update": str,
}  # fmt: skip
FIELD_MAX = {
    "path": 4096,
    "src": 4096,
    "dst": 4096,
    "commit": 64,
    "engine": 32,
    "terminal": 64,
    "data": 65536,
    "doc": 64,
}
INT_MIN = {"cursor": 0}  # integers are 1-100000 unless said here
# requests that skip the per-connection queue: an interrupt must overtake what it interrupts
# (keystrokes and resizes: not queued behind other requests, so they reach the worker in order)
# (document updates too: a CRDT merges them in any order, and typing must not wait behind a cell)
UNQUEUED = frozenset({"interrupt", "hello", "term_input", "term_resize", "doc_update", "doc_awareness"})
# workspace management over SockJS (same rules as the REST calls): type -> roles allowed
MANAGE_OPS: dict[str, tuple[str, ...]] = {
    "members": ("owner", "editor", "viewer"),
    "share": ("owner",),
    "publish": ("owner", "editor"),
    "unpublish": ("owner", "editor"),
}


class ClientError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def valid_id(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) <= MAX_ID
    return isinstance(value, str) and 0 < len(value) <= 128


def relay_fields(kind: str, msg: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``msg`` relayed to the worker for ``kind``, type-checked (else ClientError)."""
    out: dict[str, Any] = {}
    for k in RELAY_FIELDS[kind]:
        v = msg.get(k)
        if v is None:
            continue
        want = FIELD_TYPES[k]
        if not isinstance(v, want) or isinstance(v, bool):
            raise ClientError("bad_field", f"{k} must be a{'n integer' if want is int else ' string'}")
        if isinstance(v, str) and len(v) > FIELD_MAX.get(k, 1 << 62):
            raise ClientError("bad_field", f"{k} is longer than {FIELD_MAX[k]} characters")
        low = INT_MIN.get(k, 1)
        if isinstance(v, int) and not low <= v <= 100_000:
            raise ClientError("bad_field", f"{k} must be between {low} and 100000")
        out[k] = v
    return out


class LiveConnection(SockJSConnection):  # type: ignore[misc]
    app: BackendApp  # set by BackendApp on a subclass

    def on_open(self, info: Any) -> None:
        self.user: User | None = None
        self.cid = secrets.token_hex(8)  # this connection's id as the origin of its document updates
        self.said_hello = False
        self.workspaces: dict[str, str] = {}  # workspace id -> role at open
        self.last_presence: dict[str, list[str]] = {}  # workspace id -> names last sent here
        self.tasks: set[asyncio.Future[Any]] = set()
        cfg = self.app.config
        self.bucket = TokenBucket(cfg.conn_rate, cfg.conn_burst)
        # refusals allowed beyond the rate: a client that keeps sending far faster is disconnected
        # (4029), so a flood stops costing a parse and a reply per message
        self.overrun = TokenBucket(cfg.conn_rate, cfg.conn_burst)
        self.slots = asyncio.Semaphore(cfg.conn_inflight)
        self.account: Account | None = None  # shared with the account's other connections here
        self.closed = False
        self.xsrf_cookie = info.get_cookie("_xsrf").value if info.get_cookie("_xsrf") else None
        self.app.metrics.sockjs_sessions += 1
        self.app.live.add(self)
        cookie = info.get_cookie(self.app.config.cookie_name)
        self.token = cookie.value if cookie else None
        self.token_hash = hash_token(self.token) if self.token else None
        origin = info.get_header("Origin")
        if origin and not self._origin_ok(origin, info.get_header("Host") or ""):
            self.token = self.token_hash = None  # never authenticated; messages before the close are ignored
            self.ready: asyncio.Future[None] = asyncio.ensure_future(asyncio.sleep(0))
            self.session.close(4003, "origin not allowed")
            return
        self.ready = asyncio.ensure_future(self._auth(self.token))

    def _origin_ok(self, origin: str, host: str) -> bool:
        if origin in self.app.config.allowed_origins:
            return True
        return urlsplit(origin).netloc == host

    async def _auth(self, token: str | None) -> None:
        user = await lookup_user(self.app, token)
        if user is None:
            self.session.close(4001, "login required")
            return
        if self.closed:
            return
        self.user = user
        self.account = self.app.account_limits.join(user.id)

    def on_close(self) -> None:
        self.closed = True
        self.app.metrics.sockjs_sessions -= 1
        self.app.live.discard(self)
        if self.account is not None and self.user is not None:
            self.app.account_limits.leave(self.user.id)
            self.account = None
        for ws_id in list(self.workspaces):
            self._leave(ws_id)
        self.app.workspaces.terminals.detach_all(self)
        self.app.workspaces.docs.detach_all(self)
        # requests in flight run to completion (an exec keeps its workspace 'computing' until the
        # worker says done; its output is dropped): cancelling would lose track of running code

    # sending -------------------------------------------------------------------------------------
    def send_json(self, msg: dict[str, Any]) -> None:
        if self.closed:
            return
        self.app.metrics.messages_out += 1
        self.send(json.dumps(msg, separators=(",", ":")))

    def error(self, re_: Any, code: str, message: str) -> None:
        self.app.metrics.errors_sent += 1
        self.send_json({"type": "error", "re": re_, "code": code, "message": message})

    # receiving -----------------------------------------------------------------------------------
    def on_message(self, raw: Any) -> None:
        """Never raises: whatever arrives gets one protocol error or is handled (sockjs-tornado
        would log a traceback and drop the connection)."""
        try:
            self._on_message(raw)
        except Exception:
            log.exception("message handling failed")
            self.error(None, "internal", "internal error (logged)")

    def _on_message(self, raw: Any) -> None:
        if self.closed:
            return
        app = self.app
        app.metrics.messages_in += 1
        if not isinstance(raw, str):
            self.error(None, "bad_message", "a message must be a JSON object encoded as a string")
            return
        if len(raw) > app.config.max_message:
            self.error(None, "too_large", f"message longer than {app.config.max_message} bytes")
            return
        try:
            msg = json.loads(raw)
        except (ValueError, RecursionError):
            self.error(None, "bad_json", "message is not valid JSON")
            return
        if not isinstance(msg, dict):
            self.error(None, "bad_message", "a message must be a JSON object")
            return
        if not valid_id(msg.get("id")):
            self.error(
                None, "bad_message", "id must be an integer (|id| <= 2^53) or a string of 1-128 characters"
            )
            return
        kind = msg.get("type")
        if not isinstance(kind, str):
            self.error(msg["id"], "bad_message", "type must be a string")
            return
        account = self.account
        limited = not self.bucket.take()
        if not limited and account is not None and kind != "ping":  # pings: per connection only
            limited = not account.bucket.take() or (kind in HEAVY and not account.heavy.take())
        if limited:
            app.metrics.requests_limited += 1
            if not self.overrun.take():
                self.closed = True
                self.session.close(4029, "too many requests")
                return
            wait = self.bucket.wait()
            if account is not None:
                wait = max(wait, account.bucket.wait(), account.heavy.wait() if kind in HEAVY else 0.0)
            self.send_json(
                {"type": "error", "re": msg["id"], "code": "rate_limited",
                 "message": "too many requests; slow down", "retry_after": round(wait, 3)}
            )  # fmt: skip
            return
        if kind == "ping":  # answered at once (latency probe, keep-alive)
            self.send_json({"type": "pong", "re": msg["id"]})
            return
        if len(self.tasks) >= app.config.conn_inflight + app.config.conn_queue:
            app.metrics.requests_limited += 1
            self.error(msg["id"], "busy", "too many requests in flight on this connection; wait for replies")
            return
        task = asyncio.ensure_future(self._handle(msg))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handle(self, msg: dict[str, Any]) -> None:
        re_ = msg["id"]
        try:
            await self.ready
            if self.user is None:
                return
            account = self.account
            if msg["type"] in UNQUEUED or account is None:
                await self.dispatch(msg)
            else:
                async with self.slots, account.slots:
                    if not self.closed:  # queued work of a connection that went away is dropped
                        await self.dispatch(msg)
        except ClientError as exc:
            self.error(re_, exc.code, exc.message)
        except WorkspaceError as exc:
            self.error(re_, exc.code, exc.message)
        except WorkerUnavailable:
            self.error(re_, "worker_lost", "The compute worker went away; try again")
        except (DBAPIError, SATimeoutError):
            log.warning("database unavailable during %r", msg.get("type"))
            self.error(re_, "db_unavailable", "The database is unavailable; try again shortly")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("request %r failed", msg.get("type"))
            self.error(re_, "internal", "internal error (logged)")

    async def dispatch(self, msg: dict[str, Any]) -> None:
        kind, re_ = msg["type"], msg["id"]
        if self.user is None:
            return
        if kind == "hello":
            versions = msg.get("versions")
            if not isinstance(versions, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in versions
            ):
                raise ClientError("bad_field", "versions must be a list of integers")
            if not set(versions) & set(PROTOCOL_VERSIONS):
                raise ClientError(
                    "bad_version", f"this backend speaks protocol versions {list(PROTOCOL_VERSIONS)}"
                )
            if self.xsrf_cookie is not None and msg.get("xsrf") != self.xsrf_cookie:
                raise ClientError("xsrf", "hello.xsrf must repeat the _xsrf cookie")
            self.said_hello = True
            version = max(set(versions) & set(PROTOCOL_VERSIONS))
            self.send_json(
                {
                    "type": "hello",
                    "re": re_,
                    "version": version,
                    "server": "sagews-backend",
                    "user": self.user.name,
                }
            )
            return
        if not self.said_hello:
            raise ClientError("hello_required", "send hello first")
        svc = self.app.workspaces
        if kind == "open":
            # re-check the login (revoked by logout or a password change elsewhere?)
            if await lookup_user(self.app, self.token) is None:
                self.session.close(4001, "login required")
                return
            ws_id = check_id(msg.get("workspace"))
            role = await svc.role(ws_id, self.user.id)
            await svc.ensure_open(ws_id)
            if self.closed:
                return
            self.workspaces[ws_id] = role
            self.app.presence.setdefault(ws_id, set()).add(self)
            names = self._names(ws_id)
            self.last_presence[ws_id] = names
            self.send_json(
                {"type": "opened", "re": re_, "session": ws_id, "workspace": ws_id, "role": role,
                 "presence": names}
            )  # fmt: skip
            self._broadcast_presence(ws_id)
            return
        if kind == "leave":
            ws_id = self._session(msg)
            self._leave(ws_id)
            self.send_json({"type": "ok", "re": re_})
            return
        if kind in MANAGE_OPS:
            await self.manage(kind, msg)
            return
        if kind not in RELAY_FIELDS and kind != "save":
            raise ClientError("unknown_type", f"unknown message type {kind[:64]!r}")
        ws_id = self._session(msg)
        # the role kept in the connection: no DB or cache on this path; share/unshare/delete update
        # it at once on every backend (BackendApp.apply_acl, NOTIFY at COMMIT)
        role = self.workspaces[ws_id]
        if (kind in WRITE_OPS or kind == "save") and role == "viewer":
            raise ClientError("forbidden", "Read-only: you are a viewer of this workspace")
        if kind in TERMINAL_OPS:
            await self.terminal_op(kind, ws_id, role, msg)
            return
        if kind in DOC_OPS:
            await self.doc_op(kind, ws_id, msg)
            return
        if kind == "save":
            message = msg.get("message")
            if message is not None and not isinstance(message, str):
                raise ClientError("bad_field", "message must be a string")
            r = await svc.save(ws_id, message, self.user.name if self.user is not None else None)
            self.send_json({**r, "re": re_})
            return
        fields = relay_fields(kind, msg)
        t0 = time.perf_counter()

        def frame(f: dict[str, Any]) -> None:
            self.send_json({**f, "re": re_, "session": ws_id})

        r = await svc.request(ws_id, kind, fields, on_frame=frame if kind == "exec" else None)
        if kind == "exec":
            self.app.metrics.execute.observe(time.perf_counter() - t0)
        out = {**r, "re": re_}
        if "session" in out:
            out["session"] = ws_id
        if kind == "write" and r.get("type") == "write":
            warning = await notebook.check_write(fields)  # a saved .ipynb that nbformat rejects
            if warning:
                out["warning"] = warning
        self.send_json(out)
        if kind in ("write", "rename", "delete") and r.get("type") != "error":
            path = msg.get("path") or msg.get("dst")
            self.app.file_changed(ws_id, str(path), self.user.name, origin=self)

    async def terminal_op(self, kind: str, ws_id: str, role: str, msg: dict[str, Any]) -> None:
        """Terminals and completion (docs/protocol-client.md "Terminals"): relayed to the worker for
        owners and editors; a viewer gets none. Attachments are this backend's (terminals.py)."""
        re_ = msg["id"]
        if role not in TERMINAL_ROLES:
            what = "completion" if kind == "complete" else "terminals"
            raise ClientError("forbidden", f"Read-only: a viewer of this workspace gets no {what}")
        fields = relay_fields(kind, msg)
        terminals = self.app.workspaces.terminals
        if kind == "term_detach":
            terminals.detach(self, ws_id, str(fields.get("terminal", "")))
            self.send_json({"type": "ok", "re": re_, "session": ws_id, "terminal": fields.get("terminal")})
            return

        def attached(f: dict[str, Any]) -> None:  # in the worker link's read loop, before later frames
            if f.get("type") in ("term_opened", "term_attached"):
                terminals.attach(self, ws_id, f)

        on_frame = attached if kind in ("term_open", "term_attach") else None
        r = await self.app.workspaces.request(ws_id, kind, fields, on_frame=on_frame)
        self.send_json({**r, "re": re_, "session": ws_id} if "session" in r else {**r, "re": re_})

    async def doc_op(self, kind: str, ws_id: str, msg: dict[str, Any]) -> None:
        """Shared text documents (docs/protocol-client.md "Shared documents"): any member follows one
        (``doc_open``: the snapshot, then every update); updates and cursors come from owners and
        editors only (checked above, like ``write``); the worker applies them and the author is the
        caller's account, never a field of the message."""
        re_ = msg["id"]
        fields = relay_fields(kind, msg)
        path = fields.get("path")
        if not isinstance(path, str) or not path:
            raise ClientError("bad_field", "path is required")
        fields["path"] = path = posixpath.normpath(path)
        docs = self.app.workspaces.docs
        if kind == "doc_close":
            docs.detach(self, ws_id, path)
            self.send_json({"type": "ok", "re": re_, "session": ws_id, "path": path})
            return
        on_frame = None
        if kind == "doc_open":

            def on_frame(f: dict[str, Any]) -> None:  # in the link's read loop, before later frames
                docs.attach(self, ws_id, f)

        else:
            if not docs.is_attached(self, ws_id, path):
                raise ClientError("not_open", "doc_open the document first")
            fields["origin"] = self.cid
            if kind == "doc_update" and self.user is not None:
                fields["author"] = self.user.name  # recorded for the save's Co-authored-by trailers
        r = await self.app.workspaces.request(ws_id, kind, fields, on_frame=on_frame)
        out = {**r, "re": re_}
        if "session" in out:
            out["session"] = ws_id
        self.send_json(out)  # no file_changed per update: the other editors get the update itself

    async def manage(self, kind: str, msg: dict[str, Any]) -> None:
        user = self.user
        if user is None:
            return
        svc, re_ = self.app.workspaces, msg["id"]
        ws_id = self._session(msg)
        role = await svc.role(ws_id, user.id)
        if role not in MANAGE_OPS[kind]:
            raise ClientError("forbidden", f"You are a {role} of this workspace: not allowed")
        if kind == "members":
            members = await self.app.db.run(db_members, ws_id)
            self.send_json({"type": "members", "re": re_, "members": members})
        elif kind == "share":
            await svc.share(ws_id, msg.get("username"), msg.get("role"))
            self.send_json({"type": "ok", "re": re_})
        elif kind == "publish":
            slug = await svc.publish(ws_id, msg.get("path"))
            self.send_json({"type": "published", "re": re_, "url": f"/pub/{slug}"})
        else:
            path = msg.get("path")
            if not isinstance(path, str):
                raise ClientError("bad_field", "path must be a string")
            await self.app.db.run(db_unpublish, ws_id, path)
            self.send_json({"type": "ok", "re": re_})

    def _session(self, msg: dict[str, Any]) -> str:
        ws_id = msg.get("session")
        if not isinstance(ws_id, str) or ws_id not in self.workspaces:
            raise ClientError("no_session", "open the workspace first (session from opened)")
        return ws_id

    def _names(self, ws_id: str) -> list[str]:
        return self.app.presence_names(ws_id)

    def _broadcast_presence(self, ws_id: str) -> None:
        self.app.presence_changed(ws_id)

    def revoke(self, ws_id: str, reason: str) -> None:
        """The caller may no longer use ``ws_id``: leave it and say so (unsolicited ``left``)."""
        if ws_id in self.workspaces:
            self.app.workspaces.terminals.detach_all(self, ws_id, reason)
            self._leave(ws_id)
            self.send_json({"type": "left", "session": ws_id, "reason": reason})

    def _leave(self, ws_id: str) -> None:
        self.workspaces.pop(ws_id, None)
        self.app.workspaces.terminals.detach_all(self, ws_id, "left the workspace")
        self.app.workspaces.docs.detach_all(self, ws_id)
        self.last_presence.pop(ws_id, None)
        conns = self.app.presence.get(ws_id)
        if conns is not None:
            conns.discard(self)
            if not conns:
                self.app.presence.pop(ws_id, None)
        self._broadcast_presence(ws_id)
