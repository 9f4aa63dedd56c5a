"""This backend's terminal attachments: which live connections see which workspace terminal.

A terminal lives on the workspace's worker (sagews/worker/terminal.py). The backend's one
connection to that worker is attached to it (``term_open``/``term_attach``) while at least one of
this backend's clients is; the worker's ``term_output``/``term_exit`` frames (unsolicited, routed
here by sagews/backend/workspaces.py) go to those clients only, and only while their role allows a
terminal (owner or editor): a client downgraded to viewer, removed from the workspace, or gone is
detached at once (``term_detached`` tells it why), and the worker attachment is dropped when the
last client lets go. The terminal itself keeps running (reattach by id) until it is closed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sagews.backend.workspaces import Workspaces

log = logging.getLogger("sagews.backend.terminals")
TERMINAL_ROLES = frozenset({"owner", "editor"})


class Client(Protocol):
    closed: bool
    workspaces: dict[str, str]

    def send_json(self, msg: dict[str, Any]) -> None: ...


class Terminals:
    def __init__(self, workspaces: Workspaces) -> None:
        self.workspaces = workspaces
        self.attached: dict[tuple[str, str], set[Client]] = {}  # (workspace id, terminal) -> clients
        self.by_session: dict[str, str] = {}  # worker session id -> workspace id
        self.tasks: set[asyncio.Task[None]] = set()

    def attach(self, conn: Client, ws_id: str, frame: dict[str, Any]) -> None:
        """Called with the worker's ``term_opened``/``term_attached`` as it arrives (before any later
        frame of the link is read): the client gets the terminal's output from the next frame on."""
        tid, session = frame.get("terminal"), frame.get("session")
        if not isinstance(tid, str) or not isinstance(session, str) or conn.closed:
            return
        if conn.workspaces.get(ws_id) not in TERMINAL_ROLES:
            return
        self.by_session[session] = ws_id
        self.attached.setdefault((ws_id, tid), set()).add(conn)

    def detach(self, conn: Client, ws_id: str, tid: str, reason: str | None = None) -> None:
        conns = self.attached.get((ws_id, tid))
        if conns is None or conn not in conns:
            return
        conns.discard(conn)
        if reason is not None:
            conn.send_json({"type": "term_detached", "session": ws_id, "terminal": tid, "reason": reason})
        if not conns:
            del self.attached[(ws_id, tid)]
            self._prune(ws_id)
            self._spawn(self._release(ws_id, tid))

    def detach_all(self, conn: Client, ws_id: str | None = None, reason: str | None = None) -> None:
        """Every terminal of ``conn`` (in ``ws_id``, or in every workspace)."""
        for key, conns in list(self.attached.items()):
            if conn in conns and (ws_id is None or key[0] == ws_id):
                self.detach(conn, key[0], key[1], reason)

    def role_changed(self, conn: Client, ws_id: str, role: str | None) -> None:
        if role not in TERMINAL_ROLES:
            reason = (
                "access revoked" if role is None else f"read-only: you are now a {role} of this workspace"
            )
            self.detach_all(conn, ws_id, reason)

    def on_worker_frame(self, ws_id: str, msg: dict[str, Any]) -> None:
        """A ``term_output`` or ``term_exit`` from the workspace's worker."""
        tid = msg.get("terminal")
        if not isinstance(tid, str):
            return
        conns = self.attached.get((ws_id, tid))
        if not conns:
            return
        out = {k: msg[k] for k in ("type", "terminal", "data", "status", "message") if k in msg}
        out["session"] = ws_id
        for conn in list(conns):
            if conn.closed or conn.workspaces.get(ws_id) not in TERMINAL_ROLES:
                self.detach(conn, ws_id, tid, None if conn.closed else "read-only")
            else:
                conn.send_json(out)
        if msg.get("type") == "term_exit":
            self.attached.pop((ws_id, tid), None)
            self._prune(ws_id)

    def _prune(self, ws_id: str) -> None:
        """Forget the workspace's worker session once none of its terminals is attached here."""
        if not any(key[0] == ws_id for key in self.attached):
            for session in [s for s, w in self.by_session.items() if w == ws_id]:
                del self.by_session[session]

    async def _release(self, ws_id: str, tid: str) -> None:
        """No client of this backend watches the terminal any more: detach at the worker (and attach
        again if a client came back meanwhile)."""
        try:
            r = await self.workspaces.request(ws_id, "term_detach", {"terminal": tid})
            if r.get("type") == "error" and r.get("code") != "not_found":
                log.info("term_detach %s/%s: %s", ws_id, tid, r.get("message"))
            if self.attached.get((ws_id, tid)):
                await self.workspaces.request(ws_id, "term_attach", {"terminal": tid})
        except Exception as exc:  # the worker went away: nothing stays attached there anyway
            log.info("detaching terminal %s/%s failed: %s", ws_id, tid, exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
