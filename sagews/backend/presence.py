"""Coalescing of presence changes (who has a workspace open).

A change flushes at once if the workspace had no flush in the last ``interval`` seconds, else one
flush is scheduled at the end of that interval for all the changes in between. The flush itself
(``BackendApp._flush_presence``) sends the list only to connections that have not seen it and
publishes to other backends only when this backend's names changed. So one member reconnecting in a
loop costs each other member at most about one ``presence`` frame per interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

log = logging.getLogger("sagews.backend.presence")


class Presence:
    def __init__(self, interval: float, flush: Callable[[str, bool], None]) -> None:
        self.interval = interval
        self.flush = flush
        self.pending: dict[str, bool] = {}  # workspace -> publish to other backends at the next flush
        self.handles: dict[str, asyncio.TimerHandle] = {}
        self.last: dict[str, float] = {}  # workspace -> monotonic time of its last flush
        self.published: dict[str, list[str]] = {}  # workspace -> names last published to other backends

    def changed(self, ws_id: str, publish: bool) -> None:
        self.pending[ws_id] = self.pending.get(ws_id, False) or publish
        if ws_id in self.handles:
            return
        now = time.monotonic()
        wait = self.last.get(ws_id, -self.interval) + self.interval - now
        if wait <= 0:
            self._run(ws_id)
        else:
            self.handles[ws_id] = asyncio.get_running_loop().call_later(wait, self._run, ws_id)

    def _run(self, ws_id: str) -> None:
        self.handles.pop(ws_id, None)
        publish = self.pending.pop(ws_id, False)
        now = time.monotonic()
        self.last[ws_id] = now
        if len(self.last) > 10_000:  # forget workspaces quiet for longer than an interval
            for k in [k for k, t in self.last.items() if now - t > self.interval]:
                del self.last[k]
        try:
            self.flush(ws_id, publish)
        except Exception:
            log.exception("presence flush of %s failed", ws_id)

    def close(self) -> None:
        for h in self.handles.values():
            h.cancel()
        self.handles.clear()
