"""Backend fixtures: real memcached, real workers (root, TLS), the backend in this test's IOLoop."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sagews.backend.app import BackendApp, listen
from sagews.backend.config import BackendConfig, WorkerEndpoint
from sagews.db import migrate
from sagews.devpki import DevCA
from tests.backend.helpers import HttpUser, WorkerProc, free_port
from tests.fixtures.dirs import remove_service_dir, service_dir
from tests.fixtures.users import pool_config

_n = itertools.count(1)


class Memcached:
    def __init__(self) -> None:
        self.port = free_port()
        binary = shutil.which("memcached") or "/usr/bin/memcached"
        self.proc = subprocess.Popen(
            [binary, "-p", str(self.port), "-l", "127.0.0.1", "-U", "0", "-u", "memcache", "-m", "64"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("memcached did not start") from None
                time.sleep(0.02)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="session")
def memcached() -> Iterator[Memcached]:
    if not (shutil.which("memcached") or Path("/usr/bin/memcached").exists()):
        pytest.skip("memcached not installed (apt-get install memcached)")
    m = Memcached()
    yield m
    m.stop()


@pytest.fixture(scope="session")
def base_dir() -> Iterator[Path]:
    path = service_dir("sagews-backend-test-")
    path.chmod(0o755)
    yield path
    remove_service_dir(path)


@pytest.fixture(scope="session")
def pki(base_dir: Path) -> DevCA:
    (base_dir / "pki").mkdir(mode=0o755)
    return DevCA(base_dir / "pki")


@pytest.fixture(scope="session")
def make_worker(base_dir: Path, pki: DevCA) -> Iterator[Callable[[], WorkerProc]]:
    started: list[WorkerProc] = []

    def make() -> WorkerProc:
        i = len(started)
        w = WorkerProc(base_dir / f"worker{i}", pki, pool_config(f"b{i}"))
        started.append(w)
        return w

    yield make
    for w in started:
        w.stop()


@pytest.fixture(scope="session")
def worker(make_worker: Callable[[], WorkerProc]) -> WorkerProc:
    return make_worker()


class Backend:
    def __init__(self, app: BackendApp, port: int, server: Any) -> None:
        self.app = app
        self.port = port
        self.server = server
        self.base = f"http://127.0.0.1:{port}"

    def user(self, ip: str | None = None) -> HttpUser:
        return HttpUser(self.base, ip)

    async def new_user(self, name: str | None = None) -> HttpUser:
        u = self.user()
        code, body = await u.signup(name or f"user{next(_n)}")
        assert code == 200, body
        return u


@pytest.fixture
def backend_config(pki: DevCA, worker: WorkerProc) -> Callable[..., BackendConfig]:
    client = pki.issue("backend", server=False)

    def make(db_url: str, **kw: Any) -> BackendConfig:
        cfg = BackendConfig(
            host="127.0.0.1",
            port=0,
            cookie_secret="test-secret-" + "x" * 20,
            secure_cookies=False,
            worker_cert=str(client.cert),
            worker_key=str(client.key),
            worker_ca=str(pki.ca_cert_path),
            workers=[WorkerEndpoint("127.0.0.1", worker.port)],
            heartbeat_seconds=0.5,
            autosave_seconds=3600,
        )
        cfg.db.url = db_url
        for k, v in kw.items():
            setattr(cfg, k, v)
        return cfg

    return make


@pytest.fixture
async def start_backend() -> AsyncIterator[Callable[[BackendConfig], Any]]:
    started: list[Backend] = []

    async def start(cfg: BackendConfig) -> Backend:
        migrate.upgrade(cfg.db.url)
        app = BackendApp(cfg)
        server, port = listen(app, 0)
        await app.start()
        b = Backend(app, port, server)
        started.append(b)
        return b

    yield start
    for b in started:
        b.server.stop()
        await b.app.stop()


class BackendProcess:
    """A real `sagews-backend` process (its own event loop and core, as deployed) for attacks whose
    clients would otherwise share the test's event loop with the backend. Its log: ``.log``."""

    def __init__(self, cfg: BackendConfig, tmp: Path) -> None:
        cfg.port = free_port()
        (tmp / "backend.json").write_text(json.dumps(dataclasses.asdict(cfg)))
        self.log = tmp / "backend.log"
        log_fd = os.open(self.log, os.O_WRONLY | os.O_CREAT, 0o600)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from sagews.backend.app import main; sys.exit(main())",
             "--config", str(tmp / "backend.json"), "--log-level", "WARNING"],
            stdout=subprocess.PIPE, stderr=log_fd,
        )  # fmt: skip
        os.close(log_fd)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if b"listening" not in line:
            self.stop()
            raise RuntimeError(f"sagews-backend did not start: {line!r} {self.log.read_text()[-2000:]}")
        self.port = cfg.port
        self.base = f"http://127.0.0.1:{cfg.port}"

    def user(self, ip: str | None = None) -> HttpUser:
        return HttpUser(self.base, ip)

    async def new_user(self, name: str | None = None) -> HttpUser:
        u = self.user()
        code, body = await u.signup(name or f"user{next(_n)}")
        assert code == 200, body
        return u

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def backend_process(tmp_path: Path) -> Iterator[Callable[[BackendConfig], BackendProcess]]:
    started: list[BackendProcess] = []

    def start(cfg: BackendConfig) -> BackendProcess:
        migrate.upgrade(cfg.db.url)
        b = BackendProcess(cfg, tmp_path)
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


@pytest.fixture
async def backend(
    backend_config: Callable[..., BackendConfig], start_backend: Any, pg_url: str, memcached: Memcached
) -> Backend:
    """The backend on real PostgreSQL + memcached + a real worker."""
    return await start_backend(backend_config(pg_url, memcached=[memcached.address]))
