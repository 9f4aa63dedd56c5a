"""Fixtures: real worker processes (root, TLS, forks, per-workspace users) on 127.0.0.1."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from worker_helpers import WorkerProc

from sagews.devpki import DevCA
from sagews.worker.client import WorkerClient
from tests.fixtures.dirs import remove_service_dir, service_dir
from tests.fixtures.users import pool_config

_names = itertools.count(1)


@pytest.fixture(scope="session")
def base_dir() -> Iterator[Path]:
    """Outside pytest's 0700 tmp tree: workspace uids must traverse to their checkouts, and the worker key
    must be protected by its own mode (0600), not by an unreadable parent."""
    path = service_dir("sagews-worker-test-")
    yield path
    remove_service_dir(path)


@pytest.fixture(scope="session")
def pki(base_dir: Path) -> DevCA:
    (base_dir / "pki").mkdir(mode=0o755)
    return DevCA(base_dir / "pki")


@pytest.fixture(scope="session")
def make_worker(base_dir: Path, pki: DevCA) -> Iterator[Callable[..., WorkerProc]]:
    started: list[WorkerProc] = []
    client_pair = pki.issue("backend", server=False)

    def make(env: dict[str, str] | None = None, **overrides: Any) -> WorkerProc:
        # workers on one host must not share workspace users (each kills leftovers of the uids it hands out)
        for k, v in pool_config(f"t{len(started)}").items():
            overrides.setdefault(k, v)
        w = WorkerProc(base_dir / f"worker{len(started)}", pki, client_pair, overrides, env)
        started.append(w)
        return w

    yield make
    for w in started:
        w.stop()


@pytest.fixture(scope="session")
def worker(make_worker: Callable[..., WorkerProc]) -> WorkerProc:
    return make_worker()


@pytest.fixture
def client(worker: WorkerProc) -> Iterator[WorkerClient]:
    with worker.client() as c:
        yield c


@pytest.fixture
def session(client: WorkerClient) -> Iterator[str]:
    """A fresh workspace session (Python engine), closed afterwards."""
    sid = client.request(
        "open", workspace=f"ws{os.getpid()}-{next(_names)}-{int(time.time() * 1000) % 100000}"
    )["session"]
    yield sid
    client.call("close", session=sid)
