"""A bounded, durable, append-only spool of log records (used by the client and the server).

Records are JSON lines in segment files ``NNNNNNNNNNNN.jsonl`` in one directory. ``append`` writes
a batch and fsyncs it. When the spool grows beyond ``max_bytes`` the oldest segments are deleted
and their records counted in ``dropped``. ``replay(send)`` hands the records to ``send`` in order,
oldest segment first, and deletes a segment only after ``send`` returned for all of it (so a crash
or a failed send repeats records: receivers must be idempotent, which the log server is).
Not thread-safe: one thread owns a spool.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


class Spool:
    def __init__(
        self, directory: str | os.PathLike[str], max_bytes: int, segment_bytes: int = 4 << 20
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_bytes = max_bytes
        self.segment_bytes = max(4096, min(segment_bytes, max_bytes // 4))
        self.dropped = 0  # records deleted unsent because the spool was full
        self.total_bytes = sum(p.stat().st_size for p in self.segments())
        existing = [int(p.stem) for p in self.segments()]
        self._next = max(existing, default=0) + 1
        self._cur: IO[bytes] | None = None
        self._cur_size = 0

    def segments(self) -> list[Path]:
        return sorted(p for p in self.directory.glob("*.jsonl") if p.stem.isdigit())

    def pending(self) -> bool:
        return self.total_bytes > 0

    def _close_current(self) -> None:
        if self._cur is not None:
            self._cur.close()
            self._cur = None

    def append(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        data = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
        if self._cur is None or self._cur_size + len(data) > self.segment_bytes:
            self._close_current()
            path = self.directory / f"{self._next:012d}.jsonl"
            self._next += 1
            self._cur = open(path, "ab")  # noqa: SIM115 - kept open across appends
            self._cur_size = 0
        self._cur.write(data)
        self._cur.flush()
        os.fsync(self._cur.fileno())
        self._cur_size += len(data)
        self.total_bytes += len(data)
        self._enforce_bound()

    def _enforce_bound(self) -> None:
        segments = self.segments()
        while self.total_bytes > self.max_bytes and len(segments) > 1:
            oldest = segments.pop(0)
            size = oldest.stat().st_size
            with open(oldest, "rb") as fh:
                self.dropped += sum(1 for line in fh if line.endswith(b"\n"))
            oldest.unlink()
            self.total_bytes -= size

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        out = []
        with open(path, "rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break  # torn write at a crash: the batch was never acknowledged
                with contextlib.suppress(ValueError):
                    rec = json.loads(line)
                    if isinstance(rec, dict):
                        out.append(rec)
        return out

    def replay(self, send: Callable[[list[dict[str, Any]]], None], chunk: int = 1000) -> int:
        """Send everything spooled; returns the number of records. Exceptions from ``send`` propagate
        (the unsent segments stay)."""
        self._close_current()
        n = 0
        for path in self.segments():
            records = self.read(path)
            for i in range(0, len(records), chunk):
                send(records[i : i + chunk])
            size = path.stat().st_size
            path.unlink()
            self.total_bytes -= size
            n += len(records)
        return n

    def close(self) -> None:
        self._close_current()
