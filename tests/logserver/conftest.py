"""Real log server processes (TLS, mutual auth) on 127.0.0.1, a dev CA, DB helpers."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from sqlalchemy import func, select

from sagews import framing, tls
from sagews.db import make_engine, migrate
from sagews.db.models import LogRecord
from sagews.devpki import CertPair, DevCA
from sagews.logserver.config import ClientConfig

ROOT = Path(__file__).resolve().parents[2]


def wait_for(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


class LogServerProc:
    def __init__(self, directory: Path, pki: DevCA, pair: CertPair, db_url: str, **overrides: Any) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.config = {
            "host": "127.0.0.1", "port": 0, "cert": str(pair.cert), "key": str(pair.key),
            "ca": str(pki.ca_cert_path), "db": {"url": db_url}, "spool_dir": str(directory / "spool"),
            "db_retry_seconds": 0.2, **overrides,
        }  # fmt: skip
        self.proc: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        self.port = 0

    def _close_files(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def start(self) -> LogServerProc:
        cfg = self.directory / "logserver.json"
        cfg.write_text(json.dumps({**self.config, "port": self.port}))
        self._close_files()
        self._stderr = open(self.directory / "stderr.log", "a")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sagews.logserver", "--config", str(cfg)],
            stdout=subprocess.PIPE, stderr=self._stderr, text=True, cwd=ROOT,
        )  # fmt: skip
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(30)
        if not line or "listening on" not in line[0]:
            self.kill()
            raise RuntimeError(
                f"log server did not start: {line} {(self.directory / 'stderr.log').read_text()}"
            )
        self.port = int(line[0].rsplit(":", 1)[1])
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close_files()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_files()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture(scope="session")
def pki() -> Iterator[DevCA]:
    d = Path(tempfile.mkdtemp(prefix="sagews-logtest-pki-"))
    yield DevCA(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def server_pair(pki: DevCA) -> CertPair:
    return pki.issue("logserver", client=False)


@pytest.fixture(scope="session")
def client_pair(pki: DevCA) -> CertPair:
    return pki.issue("svc-test", server=False)


@pytest.fixture
def log_db(pg_url: str) -> str:
    migrate.upgrade(pg_url)
    return pg_url


@pytest.fixture
def make_server(tmp_path: Path, pki: DevCA, server_pair: CertPair) -> Iterator[Callable[..., LogServerProc]]:
    started: list[LogServerProc] = []

    def make(db_url: str, **overrides: Any) -> LogServerProc:
        s = LogServerProc(tmp_path / f"ls{len(started)}", pki, server_pair, db_url, **overrides)
        started.append(s)
        return s.start()

    yield make
    for s in started:
        s.kill()


@pytest.fixture
def client_config(tmp_path: Path, pki: DevCA, client_pair: CertPair) -> Callable[..., ClientConfig]:
    def make(servers: list[LogServerProc], **kw: Any) -> ClientConfig:
        kw.setdefault("spool_dir", str(tmp_path / "client-spool"))
        kw.setdefault("retry_max_seconds", 0.3)
        kw.setdefault("ack_timeout", 5.0)
        return ClientConfig(
            servers=[f"127.0.0.1:{s.port}" for s in servers], cert=str(client_pair.cert),
            key=str(client_pair.key), ca=str(pki.ca_cert_path), level="DEBUG", **kw,
        )  # fmt: skip

    return make


class Probe:
    """A raw TLS client for protocol tests and stats."""

    def __init__(self, port: int, pki: DevCA, pair: CertPair | None) -> None:
        ctx = tls.client_context(pair.cert if pair else None, pair.key if pair else None, pki.ca_cert_path)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.send(framing.encode(msg))
        return self.read()

    def read(self) -> dict[str, Any]:
        header = self._exact(4)
        return framing.decode_body(self._exact(int.from_bytes(header, "big")))

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def close(self) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            self.sock.close()


@pytest.fixture
def stats(pki: DevCA, client_pair: CertPair) -> Callable[[LogServerProc], dict[str, int]]:
    def get(server: LogServerProc) -> dict[str, int]:
        p = Probe(server.port, pki, client_pair)
        try:
            reply = p.request({"type": "stats"})
        finally:
            p.close()
        counters: dict[str, int] = reply["counters"]
        return counters

    return get


@pytest.fixture
def probe(pki: DevCA, client_pair: CertPair) -> Callable[..., Probe]:
    def make(server: LogServerProc, *, cert: bool = True) -> Probe:
        return Probe(server.port, pki, client_pair if cert else None)

    return make


def db_counts(url: str) -> tuple[int, int, set[str]]:
    """(rows, distinct rids, messages)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.scalar(select(func.count()).select_from(LogRecord)) or 0
            distinct = conn.scalar(select(func.count(LogRecord.rid.distinct()))) or 0
            msgs = set(conn.scalars(select(LogRecord.message)))
        return rows, distinct, msgs
    finally:
        engine.dispose()


os.environ.setdefault("PYTHONUNBUFFERED", "1")
