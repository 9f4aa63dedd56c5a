"""This backend's shared-document subscriptions: which live connections follow which open text file.

The document itself lives on the workspace's worker (sagews/worker/docs.py), the one authority that
applies every update. The backend's link to that worker is subscribed while at least one of this
backend's clients has the document open (``doc_open``); the worker's ``doc_update``/``doc_awareness``/
``doc_closed`` frames (unsolicited, routed here by sagews/backend/workspaces.py) go to those clients,
except the one whose update it was (``origin``: each connection's random id). Any member may follow a
document (viewers read it); only owners and editors may send updates (sagews/backend/live.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sagews.backend.workspaces import Workspaces

log = logging.getLogger("sagews.backend.docs")
EDIT_ROLES = frozenset({"owner", "editor"})
RELAYED = ("type", "path", "doc", "update", "reason")


class Client(Protocol):
    closed: bool
    cid: str
    workspaces: dict[str, str]

    def send_json(self, msg: dict[str, Any]) -> None: ...


class SharedDocs:
    def __init__(self, workspaces: Workspaces) -> None:
        self.workspaces = workspaces
        self.attached: dict[tuple[str, str], set[Client]] = {}  # (workspace id, path) -> clients
        self.by_session: dict[str, str] = {}  # worker session id -> workspace id
        self.tasks: set[asyncio.Task[None]] = set()

    def attach(self, conn: Client, ws_id: str, frame: dict[str, Any]) -> None:
        """Called with the worker's ``doc_opened`` as it arrives (before any later frame of the link is
        read): the client gets every update after the snapshot it is sent."""
        path = frame.get("path")
        if frame.get("type") != "doc_opened" or not isinstance(path, str) or conn.closed:
            return
        if ws_id not in conn.workspaces:
            return
        session = frame.get("session")
        if isinstance(session, str):
            self.by_session[session] = ws_id
        self.attached.setdefault((ws_id, path), set()).add(conn)

    def is_attached(self, conn: Client, ws_id: str, path: str) -> bool:
        return conn in self.attached.get((ws_id, path), ())

    def detach(self, conn: Client, ws_id: str, path: str) -> None:
        conns = self.attached.get((ws_id, path))
        if conns is None or conn not in conns:
            return
        conns.discard(conn)
        if not conns:
            del self.attached[(ws_id, path)]
            self._prune(ws_id)
            self._spawn(self._release(ws_id, path))

    def detach_all(self, conn: Client, ws_id: str | None = None) -> None:
        for key, conns in list(self.attached.items()):
            if conn in conns and (ws_id is None or key[0] == ws_id):
                self.detach(conn, key[0], key[1])

    def on_worker_frame(self, ws_id: str, msg: dict[str, Any]) -> None:
        path = msg.get("path")
        if not isinstance(path, str):
            return
        conns = self.attached.get((ws_id, path))
        if not conns:
            return
        origin = msg.get("origin")
        out = {k: msg[k] for k in RELAYED if k in msg}
        out["session"] = ws_id
        for conn in list(conns):
            if conn.closed or ws_id not in conn.workspaces:
                self.detach(conn, ws_id, path)
            elif origin is None or origin != conn.cid:
                conn.send_json(out)
        if msg.get("type") == "doc_closed":
            self.attached.pop((ws_id, path), None)
            self._prune(ws_id)

    def _prune(self, ws_id: str) -> None:
        if not any(key[0] == ws_id for key in self.attached):
            for session in [s for s, w in self.by_session.items() if w == ws_id]:
                del self.by_session[session]

    def forget_workspace(self, ws_id: str) -> None:
        """The workspace's worker session is gone (worker down, closed): its documents with it."""
        for key in [k for k in self.attached if k[0] == ws_id]:
            for conn in self.attached.pop(key):
                conn.send_json({"type": "doc_closed", "session": ws_id, "path": key[1], "reason": "worker"})
        self._prune(ws_id)

    async def _release(self, ws_id: str, path: str) -> None:
        """No client of this backend follows the document any more: unsubscribe at the worker (and
        subscribe again if a client came back meanwhile)."""
        try:
            await self.workspaces.request(ws_id, "doc_close", {"path": path})
            if self.attached.get((ws_id, path)):
                await self.workspaces.request(ws_id, "doc_open", {"path": path})
        except Exception as exc:  # the worker went away: nothing stays subscribed there anyway
            log.info("unsubscribing %s/%s failed: %s", ws_id, path, exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
