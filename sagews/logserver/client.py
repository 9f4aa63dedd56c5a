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
import collections.abc
import contextlib
import itertools
import json
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

MAX_CLIENT_FRAME = 1 << 20  # bytes of records JSON per frame, about: the client splits batches
MAX_TEXT = 32768  # characters of msg and of exc sent (the server cuts at its max_message anyway)


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
        extra = getattr(record, "sagews_extra", None)  # logging's extra={"sagews_extra": {...}}: stored
        self._queue.append(
            (self._prefix, next(self._seq), record.created, pid, record.levelno, record.name, msg, exc,
             extra if isinstance(extra, dict) else None)
        )  # fmt: skip
        if not self._signalled:  # a plain attribute: cheaper than Event.is_set()
            self._signalled = True
            self._wake.set()

    # ---- sender thread ----

    def _record(self, t: tuple[Any, ...]) -> dict[str, Any]:
        prefix, seq, ts, pid, level, name, msg, exc, extra = t
        rec = {
            "rid": f"{prefix}{seq:x}", "ts": ts, "service": self.service, "host": self.hostname, "pid": pid,
            "level": level, "logger": name[:255], "msg": msg[:MAX_TEXT], "exc": exc and exc[:MAX_TEXT],
        }  # fmt: skip
        if extra is not None:
            rec["extra"] = extra
        return rec

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
                    if self.spool.pending():
                        self._spool([batch])  # keep the order: new records queue behind the spooled ones
                    else:
                        self._ship(batch)
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

    def _spool(self, batches: collections.abc.Iterable[list[dict[str, Any]]]) -> None:
        for b in batches:
            self.spool.append(b)
            self.metrics["spooled"] += len(b)

    def _connect(self, exclude: set[int] | frozenset[int] = frozenset()) -> bool:
        if self._sock is not None:
            if self._failback_due():
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

    def _failback_due(self) -> bool:
        return self._server_index > 0 and time.monotonic() - self._connected_at > self.cfg.failback_seconds

    def _ship(self, first: list[dict[str, Any]]) -> None:
        """Deliver ``first`` and whatever is queued meanwhile: to the current server, else to the
        others in order. Batches not acknowledged by any server go to the spool, in order."""
        backlog: collections.deque[list[dict[str, Any]]] = collections.deque([first])
        failed: set[int] = set()
        while backlog:
            if len(failed) >= len(self.servers) or not self._connect(failed):
                self._next_attempt = max(self._next_attempt, time.monotonic() + self._backoff)
                self._spool(backlog)
                return
            try:
                self._pipeline(backlog)
            except (SendError, OSError) as exc:
                self.metrics["send_failures"] += 1
                self.last_error = repr(exc)
                failed.add(self._server_index)
                self._disconnect()  # the unacknowledged batches are sent again (same rids) elsewhere

    def _pipeline(self, backlog: collections.deque[list[dict[str, Any]]]) -> None:
        """Send the backlog and newly queued full batches with up to ``window`` batches
        unacknowledged on the connection (the server reads the next batch while the previous one
        commits); acks come in order. A batch leaves ``backlog`` only when acknowledged; on an
        error the caller re-sends what is left."""
        sock = self._sock
        if sock is None:
            raise SendError("not connected")
        window = max(1, self.cfg.window)
        sent: collections.deque[int] = collections.deque()  # batch ids of backlog[0:len(sent)]
        while backlog:
            while len(sent) < min(window, len(backlog)):
                batch_id = next(self._batch_ids)
                sock.sendall(self._frame(batch_id, backlog[len(sent)]))
                sent.append(batch_id)
            # pipeline only full batches: under a backlog that is throughput; with a trickle of
            # records stop-and-wait lets them gather while the sender thread sleeps in recv (the
            # sender then competes less with the logging threads for the GIL)
            if len(sent) < window and len(self._queue) >= self.cfg.batch_max and not self._failback_due():
                backlog.append(self._drain())
                continue
            self._check_ack(self._read_frame(sock), sent.popleft(), backlog.popleft())

    def _frame(self, batch_id: int, batch: list[dict[str, Any]] | bytes) -> bytes:
        """A records frame; the records' JSON is encoded once (not as part of a message dict)."""
        records = batch if isinstance(batch, bytes) else self._json(batch)
        return framing.frame_bytes(b'{"type":"records","batch":%d,"records":%s}' % (batch_id, records))

    @staticmethod
    def _json(batch: list[dict[str, Any]]) -> bytes:
        return json.dumps(batch, separators=(",", ":"), ensure_ascii=False).encode()

    def _drain(self) -> list[dict[str, Any]]:
        """Up to ``batch_max`` queued records, and about ``MAX_CLIENT_FRAME`` bytes of text at most
        (the server refuses frames over its ``max_frame``, 4 MiB by default)."""
        out = []
        q = self._queue
        size = 0
        while q and len(out) < self.cfg.batch_max and size < MAX_CLIENT_FRAME:
            r = self._record(q.popleft())
            size += 200 + len(r["msg"]) + len(r["exc"] or "")
            out.append(r)
        return out

    def _check_ack(self, reply: dict[str, Any], batch_id: int, batch: list[dict[str, Any]]) -> None:
        if reply.get("type") != "ack" or reply.get("batch") != batch_id:
            raise SendError(f"unexpected reply: {str(reply)[:200]}")
        self.metrics["acked"] += len(batch)
        self.metrics["batches"] += 1
        self.metrics["rejected"] += int(reply.get("rejected", 0))

    def _send_batch(self, batch: list[dict[str, Any]]) -> None:
        """Stop-and-wait delivery of one batch to the current server (spool replay), split in
        halves while its frame would be larger than ``MAX_CLIENT_FRAME``."""
        sock = self._sock
        if sock is None:
            raise SendError("not connected")
        body = self._json(batch)
        if len(body) > MAX_CLIENT_FRAME and len(batch) > 1:
            self._send_batch(batch[: len(batch) // 2])
            self._send_batch(batch[len(batch) // 2 :])
            return
        batch_id = next(self._batch_ids)
        sock.sendall(self._frame(batch_id, body))
        self._check_ack(self._read_frame(sock), batch_id, batch)

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
