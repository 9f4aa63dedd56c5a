"""The worker closes every descriptor once: no close() of a number it no longer owns.

A second close of a number gets EBADF, unless another thread was handed the number in between: then
that thread's descriptor is closed under it. A save failed that way during a rolling upgrade
(``OSError: [Errno 9] Bad file descriptor: '.../state/bundles/<workspace>'``: its ``os.scandir`` in
``asyncio.to_thread`` lost its directory). The culprit was uvloop's pipe transports, which close the
pipe twice (sagews/worker/pipes.py). That race is rare, but every second close is visible on its own
as a close() failing with EBADF, so the test traces the worker's close() calls (strace)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from worker_helpers import WorkerProc, wait_for

from sagews.worker.client import WorkerClient, WorkerError

STRACE = shutil.which("strace")


def _traced(pid: int) -> bool:
    tasks = list(Path(f"/proc/{pid}/task").iterdir())
    return all(
        int(re.search(r"TracerPid:\s*(\d+)", (t / "status").read_text()).group(1))  # type: ignore[union-attr]
        for t in tasks
    )


def _failed_closes(prefix: Path, threads: set[int]) -> list[str]:
    """close() calls that failed with EBADF in the worker's threads (tasks sharing its descriptor
    table: ``threads``, there when strace attached, and what they cloned with CLONE_FILES), not in
    its forked children."""
    traces = {int(p.name.rsplit(".", 1)[1]): p.read_text() for p in prefix.parent.glob(prefix.name + ".*")}
    shared: set[int] = set()
    todo = list(threads)
    while todo:
        tid = todo.pop()
        if tid in shared:
            continue
        shared.add(tid)
        for line in traces.get(tid, "").splitlines():
            m = re.match(r"clone3?\(.*CLONE_FILES.*\)\s+=\s+(\d+)", line)
            if m:
                todo.append(int(m.group(1)))
    return [
        f"{tid}: {line}"
        for tid in sorted(shared)
        for line in traces.get(tid, "").splitlines()
        if line.startswith("close(") and "EBADF" in line
    ]


@pytest.mark.skipif(STRACE is None, reason="apt-get install strace (tests/harness/lib.sh APT_TEST)")
def test_worker_never_closes_a_descriptor_twice(
    make_worker: Callable[..., WorkerProc], tmp_path: Path
) -> None:
    w = make_worker(warm_pool=2, engines=["python"], shutdown_grace_seconds=2)
    prefix = tmp_path / "close"
    assert STRACE is not None
    tracer = subprocess.Popen(  # -ff: a file per task; clone calls tell threads from forked children
        [
            STRACE,
            "-f",
            "-ff",
            "-qq",
            "-e",
            "trace=close,clone,clone3",
            "-o",
            str(prefix),
            "-p",
            str(w.proc.pid),
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _traced(w.proc.pid), 10, "strace to attach to every thread of the worker")
        threads = {int(t.name) for t in Path(f"/proc/{w.proc.pid}/task").iterdir()}
        with w.client() as c:
            sids = [c.request("open", workspace=f"fds{i}")["session"] for i in range(3)]
            for i, sid in enumerate(sids):
                c.request("write", session=sid, path="a.txt", text=f"file {i}")  # file ops: helper pipes
                c.request("save", session=sid, message="first")
                c.request("ls", session=sid, path="")
                c.request("read", session=sid, path="a.txt")
            c.request("restore", session=sids[0])  # the engine stopped, a background checkout, a new one
            c.request("restart", session=sids[1])  # the engine's stdout/stderr pipes closed, a new engine
            assert c.execute(sids[1], "6 * 7")["result"]["text/plain"] == "42"
            term = c.request("term_open", session=sids[2])["terminal"]  # the keeper's answer pipe
            c.request("term_close", session=sids[2], terminal=term)
            c.request("close", session=sids[2])
            for i, sid in enumerate(sids[:2]):
                c.request("write", session=sid, path="b.txt", text=f"more {i}")
        # SIGTERM while saves and executions are in flight (the rolling upgrade): checkpoints, closes
        clients = [w.client() for _ in sids[:2]]
        errors: list[str] = []

        def busy(client: WorkerClient, sid: str) -> None:
            for n in range(20):
                try:
                    client.request("save", session=sid, message=f"s{n}")
                    client.execute(sid, f"{n}")
                except WorkerError as exc:
                    if exc.code not in {"shutting_down", "no_session", "session_dead"}:
                        errors.append(str(exc))
                    return
                except (ConnectionError, OSError):
                    return

        busy_threads = [
            threading.Thread(target=busy, args=(cl, sid)) for cl, sid in zip(clients, sids[:2], strict=True)
        ]
        for t in busy_threads:
            t.start()
        time.sleep(0.5)
        w.proc.send_signal(signal.SIGTERM)
        for t in busy_threads:
            t.join(30)
        for cl in clients:
            cl.close()
        assert w.proc.wait(30) == 0
        assert not errors
    finally:
        if w.proc.poll() is None:  # failed before the worker stopped: strace would not end by itself
            tracer.terminate()
        tracer.wait(10)
    assert _failed_closes(prefix, threads) == []
