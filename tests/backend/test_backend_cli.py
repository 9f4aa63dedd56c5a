"""`sagews admin` and `sagews dev` as commands."""

from __future__ import annotations

import json
import os
import shutil
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
from tests.fixtures.dirs import service_dir


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


def _start_dev(data: Path, workspaces: Path) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sagews.cli", "dev", "--port", str(port), "--data-dir", str(data),
         "--workspaces-dir", str(workspaces)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )  # fmt: skip
    return proc, port


def _healthy(proc: subprocess.Popen[str], port: int, line: str = "") -> str:
    """Wait for /healthz; returns the instance line sagews dev printed (read it once)."""
    assert proc.stdout is not None
    while "instance" not in line:
        line = proc.stdout.readline()
        assert line or proc.poll() is None, "sagews dev exited"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return line
        except OSError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "sagews dev did not become healthy"
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(40)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def test_dev_serves_app_and_api() -> None:
    data = Path(tempfile.mkdtemp(prefix="sagews-dev-test-", dir="/tmp"))
    workspaces = service_dir("sagews-dev-ws-")
    proc, port = _start_dev(data, workspaces)
    base = f"http://127.0.0.1:{port}"
    try:
        _healthy(proc, port)
        with urllib.request.urlopen(base + "/", timeout=5) as r:  # noqa: S310
            assert b"<html" in r.read().lower()
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        with urllib.request.urlopen(base + "/api/me", timeout=5) as r:  # noqa: S310
            assert json.loads(r.read()) == {"user": None}
    finally:
        _stop(proc)
        subprocess.run(["rm", "-rf", str(data), str(workspaces)], check=False)


def test_dev_data_is_private_and_two_instances_do_not_share_users() -> None:
    """The data dir (databases, WAL, logs, cookie secret, keys) is 0700 and its files 0600; each
    instance has its own workspace users (prefix and uid range) and its own egress rules."""
    dirs = [Path(tempfile.mkdtemp(prefix="sagews-dev-test-", dir="/tmp")) for _ in range(2)]
    wsdirs = [service_dir("sagews-dev-ws-") for _ in range(2)]
    procs = [_start_dev(d, w) for d, w in zip(dirs, wsdirs, strict=True)]
    try:
        lines = [_healthy(p, port) for p, port in procs]
        users = [line.split("workspace users ")[1] for line in lines]
        assert users[0] != users[1], users
        uid_ranges = [line.split("(uids ")[1].rstrip(")\n").split("..") for line in lines]
        assert int(uid_ranges[0][1]) < int(uid_ranges[1][0]) or int(uid_ranges[1][1]) < int(uid_ranges[0][0])
        for d in dirs:
            assert d.stat().st_mode & 0o777 == 0o700
            for f in ("sagews.db", "logs.db", "cookie_secret"):
                assert (d / f).stat().st_mode & 0o077 == 0, f
        for (_, port), line in zip(procs, lines, strict=True):
            instance = line.split("instance ")[1].split(",")[0]
            if shutil.which("nft"):
                rules = subprocess.run(
                    ["nft", "list", "table", "inet", f"sagews_dev_{instance}"],
                    capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
                assert "meta skuid" in rules and str(port) in rules
        _stop(procs[0][0])
        _healthy(procs[1][0], procs[1][1], lines[1])  # the other instance is unaffected
    finally:
        for p, _ in procs:
            if p.poll() is None:
                _stop(p)
        subprocess.run(["rm", "-rf", *map(str, dirs), *map(str, wsdirs)], check=False)
