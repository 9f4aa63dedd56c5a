"""`sagews admin ...` (accounts, workspaces, workers) and `sagews dev` (everything local, one command)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import hashlib
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

from sagews.db import Database
from sagews.db.config import load as load_db
from sagews.worker import egress


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
    c.add_argument(
        "--exists-ok",
        action="store_true",
        help="succeed without changes when the account exists (its password is left alone)",
    )
    r = sub.add_parser("reset-password", help="set a new password and revoke every session of the account")
    r.add_argument("name")
    sub.add_parser("list-workspaces", help="every workspace (JSON lines)")
    d = sub.add_parser("delete-workspace", help="mark a workspace deleted")
    d.add_argument("id")
    sub.add_parser("workers", help="registered workers and their last heartbeat (JSON lines)")
    lim = sub.add_parser("limits", help="show (and set) an account's caps on open workspaces and storage")
    lim.add_argument("name")
    lim.add_argument("--open", help="max workspaces placed at once (integer, 0: none, 'default')")
    lim.add_argument("--storage-mb", help="max stored bundle MB of its workspaces (integer, 'default')")
    pg = sub.add_parser("purge-deleted", help="purge workspaces deleted more than --days ago")
    pg.add_argument("--days", type=float, default=30.0)
    dr = sub.add_parser(
        "drain-worker",
        help="stop placing workspaces on a worker; backends save and move its idle workspaces elsewhere",
    )
    dr.add_argument("worker", help="worker address[:port] (as registered) or id")
    dr.add_argument(
        "--wait", type=float, default=0, metavar="SECONDS", help="wait until no workspace is open there"
    )
    un = sub.add_parser("undrain-worker", help="let a drained worker take new workspaces again")
    un.add_argument("worker", help="worker address[:port] or id")
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
            found = db.transaction(accounts.find_login, name) if a.exists_ok else None
            if found is not None:
                print(json.dumps({**found[0].to_dict(), "existed": True}))
                return 0
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
        elif a.cmd == "limits":
            _limits(db, a)
        elif a.cmd == "purge-deleted":
            import datetime as dt

            from sagews.backend.workspaces import db_purge
            from sagews.db.types import utcnow

            before, total = utcnow() - dt.timedelta(days=a.days), 0
            while n := db.transaction(db_purge, before):
                total += n
            print(f"purged {total} workspace(s) deleted before {before.isoformat()}")
        elif a.cmd in ("drain-worker", "undrain-worker"):
            return _drain_worker(db, a.worker, a.cmd == "drain-worker", getattr(a, "wait", 0))
    except (accounts.AccountError, Exception) as exc:
        code = getattr(exc, "code", type(exc).__name__)
        print(f"sagews admin: {code}: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    finally:
        db.close()
    return 0


def _limits(db: Database, a: argparse.Namespace) -> None:
    """``sagews admin limits NAME [--open N|default] [--storage-mb M|default]``: prints caps + usage
    (the defaults shown are BackendConfig's; a backend's own config may set others)."""
    from sagews.backend.config import BackendConfig
    from sagews.backend.workspaces import WorkspaceError, db_set_limits, db_usage

    def value(raw: str | None, scale: int) -> int | None:
        if raw == "default":
            return None
        if raw is None or not raw.isdigit():
            raise WorkspaceError("bad_field", f"expected a non-negative integer or 'default', not {raw!r}")
        return int(raw) * scale

    changes: dict[str, int | None] = {}
    if a.open is not None:
        changes["max_open_workspaces"] = value(a.open, 1)
    if a.storage_mb is not None:
        changes["max_stored_bytes"] = value(a.storage_mb, 1 << 20)
    account_id = db.transaction(db_set_limits, a.name, changes)
    from sagews.backend.config import load

    d = load(a.config) if a.config else BackendConfig()
    print(json.dumps({"account": a.name, **db.transaction(db_usage, account_id, d.max_open_workspaces,
                                                           d.max_stored_mb << 20)}))  # fmt: skip


def _drain_worker(db: Database, ref: str, drain: bool, wait: float) -> int:
    """Mark a worker draining (or up again); with ``wait``, poll until the backends report it empty."""
    import time

    from sagews.backend.workers import list_workers
    from sagews.db.models import Worker, WorkerState

    def matches(row: dict[str, Any]) -> bool:
        host, _, port = ref.partition(":")
        if ref.isdigit():
            return int(ref) == row["id"]
        return row["address"] == host and (not port or int(port) == row["port"])

    def mark(s: Any) -> list[dict[str, Any]]:
        rows = [r for r in list_workers(s) if matches(r)]
        for r in rows:
            w = s.get(Worker, r["id"])
            if drain:
                w.state = WorkerState.draining
            elif w.state == WorkerState.draining:
                w.state = WorkerState.down  # the next heartbeat of a backend marks it up
        return rows

    rows = db.transaction(mark)
    if not rows:
        print(f"sagews admin: not_found: no registered worker matches {ref!r}", file=sys.stderr)
        return 1
    ids = {r["id"] for r in rows}
    print(json.dumps({"workers": sorted(ids), "draining": drain}))
    deadline = time.monotonic() + wait
    while drain and wait > 0:
        left = [r for r in db.transaction(list_workers) if r["id"] in ids and r["load"] > 0]
        if not left:
            print(json.dumps({"empty": sorted(ids)}))
            return 0
        if time.monotonic() > deadline:
            print(f"sagews admin: timeout: workspaces still open on {sorted(ids)}", file=sys.stderr)
            return 3
        time.sleep(1)
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
    ap.add_argument(
        "--data-dir",
        default=os.path.expanduser("~/.sagews/dev"),
        help="SQLite databases, PKI, cookie secret, worker state (made 0700)",
    )
    ap.add_argument(
        "--workspaces-dir",
        help="workspace checkouts and their private temporary directories (default "
        "/var/lib/sagews-dev/<instance>; traversable by workspace users, not under /tmp)",
    )
    ap.add_argument("--static", default=str(Path(__file__).resolve().parents[2] / "static"))
    ap.add_argument("--memcached", action="append", default=[], help="host:port (optional)")
    a = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.umask(0o077)  # every file of ours (SQLite, WAL, logs, keys) is private unless made otherwise
    data = Path(a.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)  # workspace users must not read the databases, the cookie secret, the keys
    instance = dev_instance(data)
    wsroot = Path(a.workspaces_dir or f"/var/lib/sagews-dev/{instance}").resolve()
    wsroot.mkdir(parents=True, exist_ok=True)
    wsroot.chmod(0o711)  # traversable to the (0700, per-user) checkouts, not listable
    pki = DevCA(data / "pki")
    wpair, bpair = pki.issue("worker"), pki.issue("backend", server=False)
    wcfg = {
        "host": "127.0.0.1",
        "port": 0,
        "cert": str(wpair.cert),
        "key": str(wpair.key),
        "ca": str(pki.ca_cert_path),
        "workspaces_dir": str(wsroot / "workspaces"),
        "state_dir": str(data / "worker-state"),
        "tmp_dir": str(wsroot / "tmp"),
        # per instance: two `sagews dev` on one host never share (or kill) each other's users
        "user_prefix": f"sagews_dev{instance[:4]}_",
        "uid_base": dev_uid_base(instance),
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
    table = _protect_services(
        instance, int(wcfg["uid_base"]), [a.port, wport, log_port, *_ports(a.memcached)]
    )
    # a previous run's worker (other port) is gone: drop stale rows so placement never waits on them
    _forget_other_workers(cfg.db.url, wport)
    print(
        f"sagews dev: instance {instance}, data in {data} (0700), workspaces in {wsroot}, "
        f"workspace users {wcfg['user_prefix']}N (uids {wcfg['uid_base']}..{int(wcfg['uid_base']) + 63})",
        flush=True,
    )
    try:
        asyncio.run(serve(cfg))
    finally:
        if table:
            egress.remove(table)
        for proc in (worker, logserver):
            if proc is None:
                continue
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


DEV_UID_BASE = 2_500_000


def dev_instance(data: Path) -> str:
    """A short id of a `sagews dev` instance, from its data directory."""
    return hashlib.sha256(str(data).encode()).hexdigest()[:6]


def dev_uid_base(instance: str) -> int:
    """The first uid of the instance's workspace users (100-uid slots from 2,500,000)."""
    return DEV_UID_BASE + (int(instance, 16) % 4000) * 100


def _ports(addresses: list[str]) -> list[int]:
    return [int(a.rsplit(":", 1)[1]) for a in addresses if ":" in a and a.rsplit(":", 1)[1].isdigit()]


def _protect_services(instance: str, uid_base: int, ports: list[int]) -> str | None:
    """Keep the instance's workspace users off the backend, worker, log server and memcached ports
    (nftables, sagews/worker/egress.py); without nft, say that they are not."""
    table = f"sagews_dev_{instance}"
    if not egress.available() or os.geteuid() != 0:
        print(
            "sagews dev: WARNING: nft is not available: cell code CAN connect to the backend, "
            "/metrics, the worker, the log server and memcached on this host (apt-get install nftables)",
            file=sys.stderr,
            flush=True,
        )
        return None
    try:
        egress.apply(table, egress.ruleset(table, uid_base, uid_base + 63, [p for p in ports if p]))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"sagews dev: WARNING: egress rules not applied ({exc}): cell code can reach the "
              "services on this host", file=sys.stderr, flush=True)  # fmt: skip
        return None
    return table


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
