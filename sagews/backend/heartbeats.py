"""SockJS heartbeats from one timer, and the garbage collector kept off long-lived objects.

sockjs-tornado arms a timer per session and re-arms it every ``heartbeat_delay`` (25 s). At 10,000
sessions that is 400 timer objects a second (TimerHandle, context, bound method, ...) that live 25 s:
long enough to survive two young collections and reach the oldest generation, whose growth then
triggers CPython's full collection, which walks every object of every session (about 135 each):
a stall of about a second, every minute or two (docs/benchmarks.md). Here one periodic callback
sends the heartbeats of all sessions that are due, and :func:`tune_gc` freezes what exists after
start-up and counts collection pauses (``sagews_gc_pause_seconds`` in /metrics).
"""

from __future__ import annotations

import gc
import time
from typing import Any

from sockjs.tornado.session import Session
from tornado.ioloop import PeriodicCallback

from sagews.backend.metrics import Histogram


class HeartbeatWheel:
    def __init__(self, interval: float, tick: float = 2.5) -> None:
        self.interval = interval
        self.tick = tick
        self.due: dict[Any, float] = {}  # session -> monotonic time its next heartbeat is due
        self._timer: PeriodicCallback | None = None

    def start(self) -> None:
        self._timer = PeriodicCallback(self._run, self.tick * 1000)
        self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def add(self, session: Any) -> None:
        self.due[session] = time.monotonic() + self.interval

    def discard(self, session: Any) -> None:
        self.due.pop(session, None)

    def _run(self) -> None:
        now = time.monotonic()
        for session in [s for s, t in self.due.items() if t <= now]:
            self.due[session] = now + self.interval
            session._heartbeat()  # sends "h", or stops the heartbeat if the session has no handler


def session_class(wheel: HeartbeatWheel) -> type[Session]:
    """A sockjs-tornado Session whose heartbeats come from ``wheel``."""

    class WheelSession(Session):  # type: ignore[misc]
        def start_heartbeat(self) -> None:
            wheel.add(self)

        def stop_heartbeat(self) -> None:
            wheel.discard(self)

        def delay_heartbeat(self) -> None:
            if self in wheel.due:
                wheel.add(self)

    return WheelSession


class GCWatch:
    """Collection pauses per generation, from ``gc.callbacks`` (cheap: two clock reads each)."""

    def __init__(self) -> None:
        self.pauses = Histogram(buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
        self.full = 0
        self.longest = 0.0
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        took = time.perf_counter() - self._t0
        self.pauses.observe(took)
        self.longest = max(self.longest, took)
        if info.get("generation") == 2:
            self.full += 1

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


def tune_gc() -> None:
    """After start-up: move every object that exists now (modules, classes, configuration: they live
    as long as the process) out of the collector's sight. (A larger young generation was tried:
    fewer but longer young collections, 32 over 100 ms in a 10,000-session run; thresholds stay.)"""
    gc.collect()
    gc.freeze()
