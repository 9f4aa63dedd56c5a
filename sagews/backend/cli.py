"""`sagews admin ...` (accounts, workspaces, workers) and `sagews dev` (everything local, one command)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

from sagews.db import Database
from sagews.db.config import load as load_db


def _db(args: argparse.Namespace) -> Database:
    return Database(load_db(args.config, url=args.url))  # the [db] table of a backend config


def admin(argv: list[str]) -> int:
    from sagews.backend import accounts
    from sagews.backend.workers import list_workers
    from sagews.backend.workspaces import db_delete, db_list_all

    ap = argparse.ArgumentParser(prog="sagews admin", description="administer accounts, workspaces, workers")
    ap.add_argument("--config", help="backend config file (its [db] table)")
    ap.add_argument("--url", help="database URL (overrides the config and $SAGEWS_DB_URL)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create-account", help="create an account (password from stdin or prompt)")
    c.add_argument("name")
    c.add_argument("--admin", action="store_true", help="give the account the admin role")
    r = sub.add_parser("reset-password", help="set a new password and revoke every session of the account")
    r.add_argument("name")
    sub.add_parser("list-workspaces", help="every workspace (JSON lines)")
    d = sub.add_parser("delete-workspace", help="mark a workspace deleted")
    d.add_argument("id")
    sub.add_parser("workers", help="registered workers and their last heartbeat (JSON lines)")
    a = ap.parse_args(argv)

    def password() -> str:
        if not sys.stdin.isatty():
            return sys.stdin.readline().rstrip("\n")
        return getpass.getpass("password: ")

    db = _db(a)
    try:
        if a.cmd == "create-account":
            name = accounts.check_username(a.name)
            pw = accounts.check_password(password())
            user = db.transaction(accounts.create_account, name, accounts.hash_password(pw), a.admin)
            print(json.dumps(user.to_dict()))
        elif a.cmd == "reset-password":
            pw = accounts.check_password(password())
            revoked = db.transaction(accounts.set_password, a.name, accounts.hash_password(pw))
            print(f"password set; {len(revoked)} session(s) revoked (cached lookups expire within cache_ttl)")
        elif a.cmd == "list-workspaces":
            for row in db.transaction(db_list_all):
                print(json.dumps(row))
        elif a.cmd == "delete-workspace":
            db.transaction(db_delete, a.id)
            print(f"deleted {a.id}")
        elif a.cmd == "workers":
            for row in db.transaction(list_workers):
                print(json.dumps(row))
    except (accounts.AccountError, Exception) as exc:
        code = getattr(exc, "code", type(exc).__name__)
        print(f"sagews admin: {code}: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    finally:
        db.close()
    return 0


def backend(argv: list[str]) -> int:
    from sagews.backend.app import main

    return main(argv)


def dev(argv: list[str]) -> int:
    """Backend + a local worker, SQLite, HTTP on 127.0.0.1, static/ served by the backend."""
    from sagews.backend.app import serve
    from sagews.backend.config import BackendConfig, WorkerEndpoint
    from sagews.db import migrate
    from sagews.devpki import DevCA

    ap = argparse.ArgumentParser(
        prog="sagews dev", description="run sagews locally (run as root: the worker)"
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--data-dir", default=os.path.expanduser("~/.sagews/dev"), help="SQLite, PKI, workspaces")
    ap.add_argument("--static", default=str(Path(__file__).resolve().parents[2] / "static"))
    ap.add_argument("--memcached", action="append", default=[], help="host:port (optional)")
    ap.add_argument(
        "--user-prefix",
        default="sagews_dev_",
        help="workspace users' name prefix (one per worker on a host: each kills its users' leftovers)",
    )
    a = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    data = Path(a.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o755)  # workspace users traverse to their checkouts
    pki = DevCA(data / "pki")
    wpair, bpair = pki.issue("worker"), pki.issue("backend", server=False)
    wcfg = {
        "host": "127.0.0.1",
        "port": 0,
        "cert": str(wpair.cert),
        "key": str(wpair.key),
        "ca": str(pki.ca_cert_path),
        "workspaces_dir": str(data / "workspaces"),
        "state_dir": str(data / "worker-state"),
        "tmp_dir": str(data / "tmp"),
        "user_prefix": a.user_prefix,
    }
    (data / "worker.json").write_text(json.dumps(wcfg))
    worker = subprocess.Popen(
        [sys.executable, "-m", "sagews.worker", "--config", str(data / "worker.json")], stdout=subprocess.PIPE
    )
    if worker.stdout is None:
        return 1
    line = worker.stdout.readline().decode()
    if "listening on" not in line:
        print(f"sagews dev: the worker did not start: {line}", file=sys.stderr)
        worker.kill()
        return 1
    wport = int(line.split()[3].rsplit(":", 1)[1])
    _drain(worker)
    logserver, log_port = _start_logserver(data, pki)
    secret_file = data / "cookie_secret"
    if not secret_file.exists():
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, secrets.token_hex(32).encode())
        os.close(fd)
    cfg = BackendConfig(
        host=a.host,
        port=a.port,
        cookie_secret=secret_file.read_text().strip(),
        secure_cookies=False,
        worker_cert=str(bpair.cert),
        worker_key=str(bpair.key),
        worker_ca=str(pki.ca_cert_path),
        workers=[WorkerEndpoint("127.0.0.1", wport)],
        static_dir=a.static,
        memcached=a.memcached,
    )
    if log_port:
        cfg.logging = {
            "servers": [f"127.0.0.1:{log_port}"],
            "cert": str(bpair.cert),
            "key": str(bpair.key),
            "ca": str(pki.ca_cert_path),
            "spool_dir": str(data / "logspool"),
        }
    cfg.db.url = f"sqlite:///{data / 'sagews.db'}"
    migrate.upgrade(cfg.db.url)
    # a previous run's worker (other port) is gone: drop stale rows so placement never waits on them
    _forget_other_workers(cfg.db.url, wport)
    try:
        asyncio.run(serve(cfg))
    finally:
        for proc in (worker, logserver):
            if proc is None:
                continue
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


def _start_logserver(data: Path, pki: Any) -> tuple[subprocess.Popen[bytes] | None, int]:
    """The log server on SQLite (data/logs.db), mutual TLS; (None, 0) if it does not start."""
    pair = pki.issue("logserver")
    cfg = {
        "host": "127.0.0.1",
        "port": 0,
        "cert": str(pair.cert),
        "key": str(pair.key),
        "ca": str(pki.ca_cert_path),
        "db": {"url": f"sqlite:///{data / 'logs.db'}"},
        "spool_dir": str(data / "logserver-spool"),
    }
    (data / "logserver.json").write_text(json.dumps({"logserver": cfg}))
    from sagews.db import migrate

    migrate.upgrade(f"sqlite:///{data / 'logs.db'}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sagews.logserver", "--config", str(data / "logserver.json")],
        stdout=subprocess.PIPE,
    )
    line = proc.stdout.readline().decode() if proc.stdout is not None else ""
    if "listening on" not in line:
        print(
            f"sagews dev: no log server ({line.strip() or 'exited'}); logging to stderr only", file=sys.stderr
        )
        proc.kill()
        proc.wait()
        return None, 0
    _drain(proc)
    return proc, int(line.rsplit(":", 1)[1])


def _drain(proc: subprocess.Popen[bytes]) -> None:
    """Keep reading a child's stdout after its first line, so a full pipe never blocks it."""
    import threading

    def run() -> None:
        if proc.stdout is not None:
            for _ in proc.stdout:
                pass

    threading.Thread(target=run, daemon=True).start()


def _forget_other_workers(url: str, port: int) -> None:
    from sqlalchemy import delete

    from sagews.db.models import Worker

    db = Database(url)
    try:

        def drop(s: Any) -> None:
            s.execute(delete(Worker).where(Worker.port != port))

        db.transaction(drop)
    finally:
        db.close()
