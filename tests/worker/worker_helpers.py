"""Helpers for the worker tests: a real worker process (root, TLS, forks, per-workspace users)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sagews.devpki import DevCA
from sagews.worker.client import WorkerClient

HAVE_SAGE = (
    importlib.util.find_spec("sage") is not None
    and importlib.util.find_spec("sage.all__sagemath_symbolics") is not None
)


class WorkerProc:
    def __init__(
        self,
        base: Path,
        pki: DevCA,
        client_pair: Any,
        overrides: dict[str, Any],
        env: dict[str, str] | None = None,
    ) -> None:
        server = pki.issue("worker")
        self.pki = pki
        self.client_pair = client_pair
        self.base = base
        limits = {
            "walltime_seconds": 4,
            "output_bytes": 200_000,
            "processes": 32,
            "file_size_mb": 20,
            "disk_quota_mb": 30,
            "interrupt_grace_seconds": 1.5,
        }
        limits.update(overrides.pop("limits", {}))
        self.config = {
            "host": "127.0.0.1",
            "port": 0,
            "cert": str(server.cert),
            "key": str(server.key),
            "ca": str(pki.ca_cert_path),
            "workspaces_dir": str(base / "workspaces"),
            "state_dir": str(base / "state"),
            "tmp_dir": str(base / "tmp"),
            "engines": ["python", "sage"] if HAVE_SAGE else ["python"],
            "warm_pool": 2,
            "limits": limits,
            **overrides,
        }
        base.mkdir(parents=True, exist_ok=True)
        base.chmod(0o755)
        cfg = base / "worker.json"
        cfg.write_text(json.dumps(self.config))
        self.log = open(base / "worker.log", "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sagews.worker", "--config", str(cfg)],
            stdout=subprocess.PIPE,
            stderr=self.log,
            env={**os.environ, **env} if env else None,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()  # blocks until listening (or exit)
        if "listening on" not in line:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
            self.log.seek(0)
            text = self.log.read().decode()[-3000:]
            self.log.close()
            raise RuntimeError(f"worker did not start: {line!r} {text}")
        self.port = int(line.split()[3].rsplit(":", 1)[1])

    def client(self, **kw: Any) -> WorkerClient:
        return WorkerClient(
            "127.0.0.1",
            self.port,
            cert=str(self.client_pair.cert),
            key=str(self.client_pair.key),
            ca=str(self.pki.ca_cert_path),
            **kw,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.log.close()

    def logtext(self) -> str:
        self.log.flush()
        return (self.base / "worker.log").read_text(errors="replace")


def wait_for(cond: Callable[[], Any], timeout: float = 10, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
