"""Events between backends (presence, file_changed) over PostgreSQL LISTEN/NOTIFY.

One dedicated psycopg2 connection per backend LISTENs on ``sagews_events``; its socket is watched by
the event loop (``add_reader``), so nothing blocks. Publishing is a ``pg_notify`` through the normal
pool (``Database.run``). Payloads are small JSON (PostgreSQL limits them to 8000 bytes). On SQLite
(one process) the bus is local only. Presence entries from other backends are re-announced every
``announce_seconds`` and forgotten after three missed announcements (a backend that died).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from sagews.db import Database

log = logging.getLogger("sagews.backend.events")
CHANNEL = "sagews_events"
MAX_PAYLOAD = 7900


def _notify(s: Session, payload: str) -> None:
    s.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": payload})


def notify_in(s: Session, event: dict[str, Any]) -> None:
    """Publish ``event`` from inside a DB transaction: PostgreSQL delivers it at COMMIT, so the other
    backends hear of a change exactly when it is visible (nothing on SQLite: one process)."""
    if s.get_bind().dialect.name == "postgresql":
        _notify(s, json.dumps(event, separators=(",", ":")))


class EventBus:
    def __init__(self, db: Database, on_event: Callable[[dict[str, Any]], None]) -> None:
        self.db = db
        self.on_event = on_event
        self.id = secrets.token_hex(6)
        self.enabled = db.engine.dialect.name == "postgresql"
        self.conn: Any = None
        self.fd: int | None = None
        self.connected = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.received = 0
        self.published = 0

    async def publish(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        payload = json.dumps({**event, "from": self.id}, separators=(",", ":"))
        if len(payload.encode()) > MAX_PAYLOAD:
            log.warning("event too large for NOTIFY (%d bytes): dropped", len(payload))
            return
        try:
            await self.db.run(_notify, payload)
            self.published += 1
        except Exception as exc:
            log.warning("publishing an event failed: %s", exc)

    def _connect(self) -> Any:
        raw = self.db.engine.raw_connection()  # a pooled connection, detached for LISTEN
        conn = raw.dbapi_connection
        raw.detach()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"LISTEN {CHANNEL}")
        return conn

    def _readable(self) -> None:
        conn = self.conn
        if conn is None:
            return
        try:
            conn.poll()
        except Exception as exc:
            log.warning("event connection lost: %s", exc)
            self._drop()
            return
        while conn.notifies:
            n = conn.notifies.pop(0)
            try:
                event = json.loads(n.payload)
            except ValueError:
                continue
            if not isinstance(event, dict) or event.get("from") == self.id:
                continue
            self.received += 1
            try:
                self.on_event(event)
            except Exception:
                log.exception("event handler failed")

    def _drop(self) -> None:
        loop = asyncio.get_running_loop()
        if self.fd is not None:  # the fd noted at connect: fileno() fails once libpq dropped the socket
            with contextlib.suppress(Exception):
                loop.remove_reader(self.fd)
            self.fd = None
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None
        self.connected = False
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            if self.conn is None:
                try:
                    self.conn = await loop.run_in_executor(self.db.executor, self._connect)
                    self.fd = self.conn.fileno()
                    loop.add_reader(self.fd, self._readable)
                    self.connected = True
                    delay = 0.5
                except Exception as exc:
                    log.warning("cannot LISTEN for events (retry in %.1f s): %s", delay, exc)
                    self.conn = None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10)
                    continue
            self._wake.clear()
            await self._wake.wait()

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.ensure_future(self.run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self.conn is not None:
            self._drop()


class RemotePresence:
    """Users present in a workspace through other backends: ws -> backend -> (names, seen)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.entries: dict[str, dict[str, tuple[list[str], float]]] = {}

    def update(self, ws_id: str, backend: str, names: list[str]) -> None:
        per = self.entries.setdefault(ws_id, {})
        if names:
            per[backend] = (names, time.monotonic())
        else:
            per.pop(backend, None)
            if not per:
                self.entries.pop(ws_id, None)

    def names(self, ws_id: str) -> set[str]:
        now = time.monotonic()
        per = self.entries.get(ws_id, {})
        for b in [b for b, (_, seen) in per.items() if now - seen > self.ttl]:
            del per[b]
        return {n for names, _ in per.values() for n in names}
