"""Configuration loading, the CPU limit, and the `sagews worker-call` operator client."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from worker_helpers import WorkerProc

from sagews.cli import SUBCOMMANDS
from sagews.worker.config import WorkerConfig, load


def test_config_defaults_toml_json(tmp_path: Path) -> None:
    assert load(None) == WorkerConfig()
    toml = tmp_path / "w.toml"
    toml.write_text("[worker]\nport = 7000\n[worker.limits]\nwalltime_seconds = 9\n")
    cfg = load(toml)
    assert cfg.port == 7000
    assert cfg.limits.walltime_seconds == 9
    assert cfg.limits.output_bytes == WorkerConfig().limits.output_bytes
    js = tmp_path / "w.json"
    js.write_text(json.dumps({"warm_pool": 0, "limits": {"processes": 5}}))
    assert load(js).limits.processes == 5
    js.write_text(json.dumps({"no_such_setting": 1}))
    with pytest.raises(ValueError, match="no_such_setting"):
        load(js)


def test_cli_registered() -> None:
    assert SUBCOMMANDS["worker"][0] == "sagews.worker.__main__:serve_main"
    assert SUBCOMMANDS["worker-call"][0] == "sagews.worker.__main__:call_main"


def test_worker_call(worker: WorkerProc) -> None:
    cmd = [
        sys.executable,
        "-m",
        "sagews.cli",
        "worker-call",
        "--host",
        "127.0.0.1",
        "--port",
        str(worker.port),
        "--cert",
        str(worker.client_pair.cert),
        "--key",
        str(worker.client_pair.key),
        "--ca",
        worker.config["ca"],
    ]
    out = subprocess.run([*cmd, "status"], capture_output=True, text=True, check=True, timeout=60).stdout
    assert json.loads(out.splitlines()[-1])["type"] == "status"
    opened = json.loads(
        subprocess.run(
            [*cmd, "open", "workspace=cli-ws"], capture_output=True, text=True, check=True, timeout=60
        ).stdout
    )
    proc = subprocess.run(
        [*cmd, "exec", f"session={opened['session']}", "code=print('hi'); 6*7"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    frames = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [f["type"] for f in frames] == ["stream", "result", "done"]
    assert frames[1]["data"]["text/plain"] == "42"
    bad = subprocess.run(
        [*cmd, "exec", "session=nope", "code=1"], check=False, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["code"] == "no_session"
    subprocess.run(
        [*cmd, "close", f"session={opened['session']}"], capture_output=True, check=True, timeout=60
    )


def test_cpu_limit(make_worker: Callable[..., WorkerProc]) -> None:
    w = make_worker(warm_pool=0, engines=["python"], limits={"cpu_seconds": 1, "walltime_seconds": 30})
    with w.client() as c:
        sid = c.request("open", workspace="cpu")["session"]
        r = c.execute(sid, "while True:\n    pass")
        assert r["done"]["status"] == "died"
        assert "CPU time limit" in r["done"]["message"]
        c.request("restart", session=sid)
        assert c.execute(sid, "1")["result"]["text/plain"] == "1"
