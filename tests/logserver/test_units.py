"""Spool, validation, store on SQLite, the `sagews logs` CLI, client behaviour with no server."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from sagews import cli
from sagews.db import make_engine, migrate
from sagews.logserver import records, store
from sagews.logserver.client import LogServerHandler
from sagews.logserver.config import ClientConfig
from sagews.logserver.spool import Spool


def _rec(i: int, **kw: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"rid": f"u{i}", "ts": time.time(), "service": "svc", "host": "h1", "pid": 5,
                         "level": 20, "logger": "l", "msg": f"message {i}", "exc": None}  # fmt: skip
    r.update(kw)
    return r


def test_spool_roundtrip_bound_and_torn_line(tmp_path: Path) -> None:
    s = Spool(tmp_path / "sp", max_bytes=64 * 1024, segment_bytes=8 * 1024)
    for i in range(0, 2000, 10):
        s.append([_rec(j) for j in range(i, i + 10)])
    assert s.dropped > 0  # oldest segments were deleted and counted
    got: list[dict[str, Any]] = []
    s.replay(got.extend)
    assert len(got) + s.dropped == 2000
    assert [r["rid"] for r in got] == [f"u{i}" for i in range(s.dropped, 2000)]  # oldest dropped, order kept
    assert not s.pending()

    s.append([_rec(1), _rec(2)])
    s.close()
    seg = s.segments()[-1]
    with open(seg, "ab") as fh:
        fh.write(b'{"rid": "torn"')  # a crash in the middle of an append
    s2 = Spool(tmp_path / "sp", max_bytes=64 * 1024)
    got = []
    s2.replay(got.extend)
    assert [r["rid"] for r in got] == ["u1", "u2"]


def test_replay_keeps_segment_when_send_fails(tmp_path: Path) -> None:
    s = Spool(tmp_path / "sp", max_bytes=1 << 20)
    s.append([_rec(1)])

    def fail(_: list[dict[str, Any]]) -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        s.replay(fail)
    assert s.pending()
    got: list[dict[str, Any]] = []
    s.replay(got.extend)
    assert [r["rid"] for r in got] == ["u1"]


@pytest.mark.parametrize(
    "bad",
    [{"ts": "x"}, {"ts": float("nan")}, {"pid": -1}, {"level": 1.5}, {"level": False}, {"rid": 5},
     {"service": "s" * 65}, {"host": None}, {"extra": "x"}, {"msg": 3}],
)  # fmt: skip
def test_validation_rejects(bad: dict[str, Any]) -> None:
    with pytest.raises(records.Invalid):
        records.validate(_rec(1, **bad), records.Limits())


def test_validation_cuts() -> None:
    out, cut = records.validate(_rec(1, msg="a\x00" * 50, extra={"k": "v" * 100}), records.Limits(10, 50))
    assert cut and out["msg"].endswith("...[truncated]") and len(out["msg"]) == 10 + len("...[truncated]")
    assert "\x00" not in out["msg"]
    assert "_dropped" in out["extra"]


def test_store_sqlite_idempotent_and_logs_cli(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    migrate.upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    now = time.time()
    batch = [
        _rec(1, ts=now - 7200, msg="old start"),
        _rec(2, level=40, msg="disk full", service="worker", host="w1"),
        _rec(3, msg="all good", extra={"a": 1}),
        _rec(4, level=30, msg="slow 100% query", exc="Traceback: x"),
    ]
    try:
        assert store.insert(engine, batch) == 4
        assert store.insert(engine, batch) == 0  # replays and failover resends are no-ops
    finally:
        engine.dispose()

    def run(*args: str) -> list[str]:
        assert cli.main(["logs", "--url", sqlite_url, *args]) == 0
        return capsys.readouterr().out.splitlines()

    assert len([x for x in run() if "svc" in x or "worker" in x]) == 4
    assert [x.split(" l: ", 1)[1] for x in run("--level", "WARNING") if " l: " in x] == [
        "disk full",
        "slow 100% query",
    ]
    out = run("--service", "worker")
    assert len(out) == 1 and "w1 worker[5] ERROR l: disk full" in out[0]
    assert len(run("--host", "w1")) == 1
    assert not any("old start" in x for x in run("--since", "1h"))
    assert any("old start" in x for x in run("--until", "1h"))
    assert run("--grep", "100%")[0].endswith("slow 100% query")
    assert run("-n", "1")[-1] == "Traceback: x"


def test_handler_never_blocks_without_servers(tmp_path: Path, pki: Any, client_pair: Any) -> None:
    cfg = ClientConfig(
        servers=["127.0.0.1:1"], cert=str(client_pair.cert), key=str(client_pair.key),
        ca=str(pki.ca_cert_path), spool_dir=str(tmp_path / "spool"), queue_max=500, retry_max_seconds=0.2,
    )  # fmt: skip
    h = LogServerHandler(cfg, "svc")
    lg = logging.getLogger("sagews.test.noserver")
    lg.propagate = False
    lg.handlers = [h]
    lg.setLevel(logging.INFO)
    try:
        t0 = time.perf_counter()
        for i in range(5000):
            lg.info("x %d", i)
        assert time.perf_counter() - t0 < 2.0
        assert h.flush(20)
        assert h.metrics["spooled"] + h.metrics["dropped_queue_full"] == 5000
        assert h.spool.pending()
    finally:
        h.close()
