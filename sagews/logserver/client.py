"""The logging handler every sagews service installs: never blocks, fails over, spools, replays.

``emit`` only formats the message and appends a tuple to a bounded deque (a few microseconds);
a background thread batches records, sends them to the first log server that answers (primary,
then failovers), and waits for the acknowledgement, which the server sends after COMMIT (or
after fsync to its own spool). When no server answers, batches go to a durable local spool
(fsync per batch), replayed in order on reconnect. Every record carries a client-generated id
(``rid``), so a batch re-sent after a lost ack is stored once. See docs/protocol-logserver.md.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import socket
import ssl
import struct
import threading
import time
import uuid
from typing import Any

from sagews import framing, tls
from sagews.logserver.config import ClientConfig
from sagews.logserver.spool import Spool

MAX_CLIENT_FRAME = 1 << 20  # the client splits batches to stay under this


class SendError(Exception):
    pass


def _parse(server: str) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    return host.strip("[]"), int(port)


class LogServerHandler(logging.Handler):
    def __init__(self, cfg: ClientConfig, service: str, *, host: str | None = None) -> None:
        super().__init__(logging.getLevelName(cfg.level) if isinstance(cfg.level, str) else cfg.level)
        self.cfg = cfg
        self.service = service
        self.hostname = host or socket.gethostname()
        self.servers = [_parse(s) for s in cfg.servers]
        self.ssl = tls.client_context(cfg.cert, cfg.key, cfg.ca)
        self.spool = Spool(cfg.spool_dir, int(cfg.spool_max_mb * (1 << 20)))
        self.metrics: collections.Counter[str] = collections.Counter()
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._wake = threading.Event()
        self._signalled = False
        self._queue_max = cfg.queue_max
        self._closing = False
        self._busy = False
        self._new_ids()
        os.register_at_fork(after_in_child=self._new_ids)  # a forked child must not reuse our rids
        self._sock: ssl.SSLSocket | None = None
        self.last_error = ""
        self._server_index = -1
        self._connected_at = 0.0
        self._next_attempt = 0.0
        self._backoff = 0.05
        self._batch_ids = itertools.count(1)
        self._thread = threading.Thread(target=self._run, name="sagews-log-sender", daemon=True)
        self._thread.start()

    def _new_ids(self) -> None:
        self._pid = os.getpid()
        self._prefix = f"{uuid.uuid4().hex}-"
        self._seq = itertools.count(1)

    # ---- caller side: must never block ----

    def handle(self, record: logging.LogRecord) -> bool:  # no handler lock: the deque is thread-safe
        rv = self.filter(record)
        if rv:
            self.emit(record)
        return bool(rv)

    def emit(self, record: logging.LogRecord) -> None:
        if len(self._queue) >= self._queue_max:
            self.metrics["dropped_queue_full"] += 1
            return
        try:
            msg = record.getMessage()
            exc = None
            if record.exc_info:
                exc = logging.Formatter().formatException(record.exc_info)
            elif record.exc_text:
                exc = record.exc_text
        except Exception:
            self.handleError(record)
            return
        pid = record.process or self._pid
        self._queue.append(
            (self._prefix, next(self._seq), record.created, pid, record.levelno, record.name, msg, exc)
        )
        if not self._signalled:  # a plain attribute: cheaper than Event.is_set()
            self._signalled = True
            self._wake.set()

    # ---- sender thread ----

    def _record(self, t: tuple[Any, ...]) -> dict[str, Any]:
        prefix, seq, ts, pid, level, name, msg, exc = t
        return {
            "rid": f"{prefix}{seq:x}", "ts": ts, "service": self.service, "host": self.hostname, "pid": pid,
            "level": level, "logger": name[:255], "msg": msg[:32768], "exc": exc,
        }  # fmt: skip

    def _drain(self) -> list[dict[str, Any]]:
        out = []
        q = self._queue
        while q and len(out) < self.cfg.batch_max:
            out.append(self._record(q.popleft()))
        return out

    def _run(self) -> None:
        while True:
            self._wake.clear()
            self._signalled = False  # after clear(): an emit in between is picked up by the drain below
            self._busy = True
            try:
                if self.spool.pending() and self._connect():
                    try:
                        n = self.spool.replay(self._send_batch, self.cfg.batch_max)
                        self.metrics["replayed"] += n
                    except (SendError, OSError):
                        self._disconnect()
                batch = self._drain()
                if batch:
                    if self.spool.pending() or not self._send_any(batch):
                        self.spool.append(batch)
                        self.metrics["spooled"] += len(batch)
                    self.metrics["spool_dropped"] = self.spool.dropped
                    continue
            finally:
                self._busy = False
            if self._closing:
                break
            timeout = max(0.01, self._next_attempt - time.monotonic()) if self.spool.pending() else 5.0
            self._wake.wait(timeout)
        self._disconnect()
        self.spool.close()

    def _connect(self, exclude: set[int] | frozenset[int] = frozenset()) -> bool:
        if self._sock is not None:
            if self._server_index > 0 and time.monotonic() - self._connected_at > self.cfg.failback_seconds:
                self._disconnect()  # try the primary again
            else:
                return True
        if time.monotonic() < self._next_attempt:
            return False
        for i, (host, port) in enumerate(self.servers):
            if i in exclude:
                continue
            try:
                raw = socket.create_connection((host, port), timeout=self.cfg.connect_timeout)
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock = self.ssl.wrap_socket(raw, server_hostname=host)
            except (OSError, ssl.SSLError) as exc:
                self.metrics["connect_failures"] += 1
                self.last_error = f"{host}:{port}: {exc!r}"
                continue
            sock.settimeout(self.cfg.ack_timeout)
            if self._server_index not in (-1, i):
                self.metrics["failovers"] += 1
            self._sock, self._server_index, self._connected_at = sock, i, time.monotonic()
            self._backoff = 0.05
            return True
        self._next_attempt = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.cfg.retry_max_seconds)
        return False

    def _disconnect(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _send_any(self, batch: list[dict[str, Any]]) -> bool:
        """Send to the current server, else the others in order. False if none acknowledged."""
        failed: set[int] = set()
        while len(failed) < len(self.servers):
            if not self._connect(failed):
                return False
            try:
                self._send_batch(batch)
                return True
            except (SendError, OSError):
                self.metrics["send_failures"] += 1
                failed.add(self._server_index)
                self._disconnect()
        self._next_attempt = time.monotonic() + self._backoff
        return False

    def _send_batch(self, batch: list[dict[str, Any]]) -> None:
        frame = framing.encode({"type": "records", "batch": 0, "records": batch})
        if len(frame) > MAX_CLIENT_FRAME and len(batch) > 1:
            half = len(batch) // 2
            self._send_batch(batch[:half])
            self._send_batch(batch[half:])
            return
        sock = self._sock
        if sock is None:
            raise SendError("not connected")
        batch_id = next(self._batch_ids)
        frame = framing.encode({"type": "records", "batch": batch_id, "records": batch})
        sock.sendall(frame)
        reply = self._read_frame(sock)
        if reply.get("type") != "ack" or reply.get("batch") != batch_id:
            raise SendError(f"unexpected reply: {str(reply)[:200]}")
        self.metrics["acked"] += len(batch)
        self.metrics["batches"] += 1
        self.metrics["rejected"] += int(reply.get("rejected", 0))

    def _read_frame(self, sock: ssl.SSLSocket) -> dict[str, Any]:
        header = self._recv_exact(sock, 4)
        (length,) = struct.unpack(">I", header)
        if length > framing.DEFAULT_MAX_FRAME:
            raise SendError("reply too large")
        return framing.decode_body(self._recv_exact(sock, length))

    @staticmethod
    def _recv_exact(sock: ssl.SSLSocket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise SendError("connection closed")
            buf += chunk
        return buf

    # ---- lifecycle ----

    def flush(self, timeout: float = 10.0) -> bool:  # type: ignore[override]
        """Wait until everything emitted so far was acknowledged or spooled (and the spool replayed
        if a server answers). True if that happened within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._queue and not self._busy and (not self.spool.pending() or self._sock is None):
                return True
            self._wake.set()
            time.sleep(0.005)
        return False

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        self._thread.join(timeout=self.cfg.ack_timeout + 5)
        super().close()


def install(cfg: ClientConfig, service: str, logger: logging.Logger | None = None) -> LogServerHandler:
    """Attach a :class:`LogServerHandler` to ``logger`` (the root logger by default)."""
    handler = LogServerHandler(cfg, service)
    (logger or logging.getLogger()).addHandler(handler)
    return handler
