"""`sagews admin` and `sagews dev` as commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from sagews import cli
from sagews.db import migrate
from tests.backend.helpers import free_port


def test_admin_commands(
    sqlite_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    migrate.upgrade(sqlite_url)
    monkeypatch.setattr(sys, "stdin", io.StringIO("first password\n"))
    assert cli.main(["admin", "--url", sqlite_url, "create-account", "Ada", "--admin"]) == 0
    assert json.loads(capsys.readouterr().out) == {"id": 1, "name": "Ada", "is_admin": True}
    monkeypatch.setattr(sys, "stdin", io.StringIO("first password\n"))
    assert (
        cli.main(["admin", "--url", sqlite_url, "create-account", "ada"]) == 1
    )  # names are case-insensitive
    assert "taken" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert cli.main(["admin", "--url", sqlite_url, "reset-password", "ada"]) == 1
    monkeypatch.setattr(sys, "stdin", io.StringIO("second password\n"))
    assert cli.main(["admin", "--url", sqlite_url, "reset-password", "ada"]) == 0
    from sagews.backend import accounts
    from sagews.db import Database

    db = Database(sqlite_url)
    try:
        found = db.transaction(accounts.find_login, "ADA")
        assert found is not None and accounts.verify_password(found[1], "second password")
        from sagews.backend.workspaces import db_create

        ws = db.transaction(db_create, found[0].id, "made by test")
    finally:
        db.close()
    capsys.readouterr()
    assert cli.main(["admin", "--url", sqlite_url, "list-workspaces"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["id"], r["owner"]) for r in rows] == [(ws["id"], "Ada")]
    assert cli.main(["admin", "--url", sqlite_url, "delete-workspace", ws["id"]]) == 0
    capsys.readouterr()
    assert cli.main(["admin", "--url", sqlite_url, "list-workspaces"]) == 0
    assert capsys.readouterr().out == ""
    assert cli.main(["admin", "--url", sqlite_url, "workers"]) == 0


def test_dev_serves_app_and_api() -> None:
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="sagews-dev-test-", dir="/tmp"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sagews.cli", "dev", "--port", str(port), "--data-dir", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2) as r:  # noqa: S310 (loopback)
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "sagews dev did not become healthy"
            time.sleep(0.1)
        with urllib.request.urlopen(base + "/", timeout=5) as r:  # noqa: S310
            assert b"<html" in r.read().lower()
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        with urllib.request.urlopen(base + "/api/me", timeout=5) as r:  # noqa: S310
            assert json.loads(r.read()) == {"user": None}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        subprocess.run(["rm", "-rf", str(data)], check=False)
