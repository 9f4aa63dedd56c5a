# ruff: noqa: ASYNC109
"""Steady client load for drills: users who keep saving and executing through the load balancer.

Each user works in a workspace of its own over SockJS (websocket) like the browser client does: when
the connection closes it reconnects through the load balancer and reopens the workspace. A request the
server never answered is re-sent only after a close with code 1012 ("service restart": a backend that
drains closes its connections only after every request in flight was answered, so an unanswered one
was never processed); after any other disconnect it counts as lost. Every save is acknowledged only
after COMMIT; ``acked`` keeps the content of each acknowledged save, so a drill can check afterwards
that every one of them is stored (or a newer text of that user: a save whose answer was lost in a
disconnect may have been stored; ``stored_unacknowledged`` counts those).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from tests.backend.helpers import HttpUser, SockClient
from tests.system.journey import connect, new_user, new_workspace


@dataclass
class Counts:
    requests: int = 0
    failed: int = 0  # error replies, and requests lost in a disconnect that was not a clean restart
    resent: int = 0  # unanswered at a 1012 close, sent again after reconnecting
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)
    acked: dict[str, str] = field(default_factory=dict)  # workspace/path -> text of the last acked save
    # per user and outage: (first failure, that user's next success); None while it is still failing
    user_outages: list[list[float | None]] = field(default_factory=list)
    # workspaces whose stored version is newer than their last acknowledged save (an answer lost)
    stored_unacknowledged: int = 0
    completed: dict[str, int] = field(default_factory=dict)  # answered requests by type (write, save, exec)

    def recovery_after(self, t0: float) -> tuple[float, int, int]:
        """Seconds from ``t0`` until every user that failed after it succeeded again, the number
        of such users, and how many of them never succeeded again."""
        hit = [o for o in self.user_outages if o[0] is not None and o[0] >= t0]
        ends = [o[1] for o in hit if o[1] is not None]
        return (max(ends) - t0 if ends else 0.0), len(hit), sum(1 for o in hit if o[1] is None)

    def fail(self, what: str) -> None:
        self.failed += 1
        if len(self.errors) < 50:
            self.errors.append(what)


def _seq(text: str) -> int:
    """The step number in a text the load wrote (``save N at T``); -1 for any other text."""
    parts = text.split()
    return int(parts[1]) if len(parts) >= 2 and parts[0] == "save" and parts[1].isdigit() else -1


class LoadUser:
    def __init__(self, base: str, ca: str, counts: Counts, pause: float = 0.2) -> None:
        self.base, self.ca, self.counts, self.pause = base, ca, counts, pause
        self.user: HttpUser | None = None
        self.ws = ""
        self.c: SockClient | None = None
        self.n = 0
        self.down: list[float | None] | None = None  # this user's current outage, in counts.user_outages

    def _failed(self, what: str) -> None:
        self.counts.fail(what)
        if self.down is None:
            self.down = [time.monotonic(), None]
            self.counts.user_outages.append(self.down)

    def _succeeded(self) -> None:
        if self.down is not None:
            self.down[1] = time.monotonic()
            self.down = None

    async def start(self) -> None:
        self.user = await new_user(self.base, self.ca, "load")
        self.ws = await new_workspace(self.user, "load")
        await self._reconnect()

    async def _reconnect(self) -> None:
        if self.c is not None:
            with contextlib.suppress(Exception):
                await self.c.close()
        assert self.user is not None
        for attempt in range(60):
            try:
                self.c = await connect(self.user)
                r = await self.c.request({"type": "open", "workspace": self.ws}, timeout=60)
                if r.get("type") == "opened":
                    return
            except (ConnectionError, OSError, TimeoutError, AssertionError) as exc:
                if attempt == 59:
                    raise ConnectionError(f"could not reconnect: {exc}") from exc
            await asyncio.sleep(0.25)

    async def request(self, msg: dict[str, Any], timeout: float = 60) -> dict[str, Any] | None:
        """One request; reconnects (and re-sends after a clean restart) as the browser client does."""
        self.counts.requests += 1
        for _ in range(5):
            assert self.c is not None
            try:
                frames = await self.c.frames({**msg, "session": self.ws}, timeout=timeout)
            except ConnectionError as exc:
                # a clean restart (1012), or a request that never left (the socket was closed first)
                clean = "1012" in str(exc) or str(exc).startswith("not sent")
                self.counts.reconnects += 1
                await self._reconnect()
                if clean:
                    self.counts.resent += 1
                    continue
                self._failed(f"{msg['type']}: lost in a disconnect ({exc})")
                return None
            except TimeoutError:
                self._failed(f"{msg['type']}: no answer in {timeout} s")
                await self._reconnect()
                return None
            final = frames[-1]
            if final.get("type") == "error":
                self._failed(f"{msg['type']}: {final.get('code')}: {final.get('message')}")
                return None
            self._succeeded()
            self.counts.completed[msg["type"]] = self.counts.completed.get(msg["type"], 0) + 1
            return final
        self._failed(f"{msg['type']}: restarted five times in a row")
        return None

    async def step(self) -> None:
        self.n += 1
        text = f"save {self.n} at {time.time():.3f}\n"
        path = "load.txt"
        if await self.request({"type": "write", "path": path, "text": text}) is None:
            return
        saved = await self.request({"type": "save", "message": f"load {self.n}"})
        if saved is not None and saved.get("type") == "saved":
            self.counts.acked[f"{self.ws}/{path}"] = text
        if self.n % 3 == 0:
            await self.request({"type": "exec", "code": f"{self.n} * 2", "engine": "python"})

    async def close(self) -> None:
        if self.c is not None:
            await self.c.close()

    async def stored(self, path: str = "load.txt") -> str | None:
        """The file as of the workspace's newest stored commit (what a reopen anywhere restores)."""
        history = await self.request({"type": "history", "limit": 1})
        if not history or not history.get("commits"):
            return None
        read = await self.request({"type": "read", "path": path, "commit": history["commits"][0]["commit"]})
        return None if read is None else read.get("text")


async def run_load(
    base: str,
    ca: str,
    users: int,
    stop: asyncio.Event,
    counts: Counts,
    *,
    check: bool = True,
    pause: float = 0.2,
    started: asyncio.Event | None = None,
) -> list[str]:
    """``users`` users working until ``stop`` is set, each pausing ``pause`` s after every step
    (write, save, and every third step an exec); ``started`` is set once all have signed up and opened
    their workspace. With ``check``, each then reads back its newest stored version: returns the
    workspaces whose stored text is not their last acknowledged save."""
    people = [LoadUser(base, ca, counts, pause) for _ in range(users)]
    await asyncio.gather(*(p.start() for p in people))
    if started is not None:
        started.set()

    async def work(p: LoadUser) -> None:
        while not stop.is_set():
            await p.step()
            await asyncio.sleep(p.pause)

    mismatches = []
    try:
        await asyncio.gather(*(work(p) for p in people))
        if check:
            for p in people:
                want = counts.acked.get(f"{p.ws}/load.txt")
                if want is None:
                    continue
                have = await p.stored()
                if have == want:
                    continue
                # Newer than the last acknowledged save: a save whose answer was lost in the
                # disconnect (the client could not know) was stored after all. Not a loss.
                if have is not None and _seq(have) > _seq(want):
                    counts.stored_unacknowledged += 1
                    continue
                mismatches.append(p.ws)
    finally:
        for p in people:
            await p.close()
    return mismatches
