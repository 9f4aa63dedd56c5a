"""Containment (issue 19): each attack runs against a real worker while a bystander workspace is served.

Bounds here are generous functional limits (the machine is shared); the bystander's real p99 during
each attack is measured by bench/bench_containment.py (docs/benchmarks.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from attacks import (
    BACKGROUND_YES,
    FOREIGN_FRAMES,
    cpu_seconds,
    fuzz_jobs,
    percentile,
    round_trips,
    start_flood,
    write_jobs,
)
from worker_helpers import WorkerProc

from sagews.worker.client import WorkerClient


@pytest.fixture(scope="module")
def cw(make_worker: Callable[..., WorkerProc]) -> WorkerProc:
    """One worker for this module's attacks (python engine; Sage is not needed to attack)."""
    return make_worker(engines=["python"], limits={"output_bytes": 200_000, "walltime_seconds": 10})


@pytest.fixture(scope="module")
def bystander(cw: WorkerProc) -> Iterator[tuple[WorkerClient, str]]:
    with cw.client() as c:
        sid = c.request("open", workspace="bystander")["session"]
        c.execute(sid, "secret = 'kept'")
        yield c, sid


@pytest.fixture
def attacker(cw: WorkerProc, request: pytest.FixtureRequest) -> Iterator[tuple[WorkerClient, str]]:
    with cw.client() as c:
        sid = c.request("open", workspace=f"attacker-{request.node.name[5:40]}")["session"]
        yield c, sid
        c.call("close", session=sid)


def _params(w: WorkerProc) -> dict[str, object]:
    return {
        "port": w.port,
        "cert": str(w.client_pair.cert),
        "key": str(w.client_pair.key),
        "ca": w.config["ca"],
    }


def _unharmed(bystander: tuple[WorkerClient, str]) -> None:
    c, sid = bystander
    assert c.execute(sid, "secret")["result"]["text/plain"] == "'kept'"


def test_request_flood_and_fuzz_do_not_delay_heartbeats(
    cw: WorkerProc, bystander: tuple[WorkerClient, str], attacker: tuple[WorkerClient, str]
) -> None:
    """2,000 writes over 20 connections into one session, then 10,000 fuzz frames over 50 connections:
    the bystander's status and exec stay fast, the fuzz gets protocol errors only, no traceback."""
    c, sid = bystander
    for jobs in (write_jobs(attacker[1], 20, 100), fuzz_jobs(50, 200)):
        flood = start_flood(_params(cw), jobs)
        times = round_trips(c, sid, until=lambda f=flood: not f.is_alive())  # type: ignore[misc]
        flood.join(60)
        assert flood.exitcode == 0, "a request got an `internal` error (see the captured output)"
        worst = {k: max(v) for k, v in times.items()}
        p99 = {k: percentile(v, 99) for k, v in times.items()}
        print(f"bystander under {len(jobs)} flooding connections: worst {worst}, p99 {p99}")
        assert worst["status"] < 2.0 and p99["status"] < 0.5, (worst, p99, len(times["status"]))
        assert worst["exec"] < 2.0 and p99["exec"] < 0.5, (worst, p99)
    log = cw.logtext()
    assert "Traceback" not in log, log[log.index("Traceback") - 300 :][:3000]
    _unharmed(bystander)


def test_background_output_does_not_cost_the_worker_a_core(
    cw: WorkerProc, bystander: tuple[WorkerClient, str], attacker: tuple[WorkerClient, str]
) -> None:
    """A `yes` left running after its cell: once the cell's output budget is spent the worker stops
    reading its pipe (the writer blocks); the next cell still works."""
    c, sid = attacker
    assert c.execute(sid, BACKGROUND_YES)["result"]["text/plain"] == "'started'"
    time.sleep(0.5)  # the budget (200 kB) is spent within milliseconds; then the pipe is left full
    before = cpu_seconds(cw.proc.pid)
    time.sleep(2)
    used = cpu_seconds(cw.proc.pid) - before
    assert used < 0.4, f"the worker used {used:.2f} s of CPU in 2 s draining a background `yes`"
    # the next cell gets the stale output first, floods, and is interrupted with the `yes`
    r = c.execute(sid, "import time\ntime.sleep(0.1)\n'next'")
    assert r["done"]["status"] in {"ok", "limit", "interrupted"}
    c.request("restart", session=sid)
    assert c.execute(sid, "'fresh'")["result"]["text/plain"] == "'fresh'"
    _unharmed(bystander)


def test_foreign_engine_frames_are_discarded_cheaply(
    cw: WorkerProc, bystander: tuple[WorkerClient, str], attacker: tuple[WorkerClient, str]
) -> None:
    """User code writes 60 MiB frames with another request's id to its control socket in a loop: the
    first one ends the session (larger than any output it may send); the bystander is not slowed."""
    c, sid = attacker
    c.send(
        {
            "type": "exec",
            "id": "spam",
            "session": sid,
            "code": FOREIGN_FRAMES + "\nimport time\ntime.sleep(3)",
        }
    )
    bc, bsid = bystander
    end = time.monotonic() + 3
    times = round_trips(bc, bsid, until=lambda: time.monotonic() > end)
    assert percentile(times["exec"], 99) < 0.5, times
    done = c.recv()
    while done is not None and not (done.get("re") == "spam" and done["type"] in {"done", "error"}):
        done = c.recv()
    assert done is not None and done["status"] == "died", done
    assert "frame" in done["message"]
    c.request("restart", session=sid)
    assert c.execute(sid, "'fresh'")["result"]["text/plain"] == "'fresh'"
