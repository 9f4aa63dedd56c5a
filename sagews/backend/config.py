"""Backend configuration: one dataclass, from a TOML/JSON file (``[backend]`` and ``[db]`` tables)."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sagews.db.config import DBConfig, env_url
from sagews.db.config import from_dict as db_from_dict


@dataclass
class WorkerEndpoint:
    address: str
    port: int
    capacity: int = 100


@dataclass
class BackendConfig:
    host: str = "127.0.0.1"
    port: int = 8443
    tls_cert: str | None = None  # browser-facing certificate; required unless host is loopback
    tls_key: str | None = None
    cookie_secret: str = ""  # required; signs the _xsrf cookie
    session_days: float = 14.0
    cookie_name: str = "sagews_session"
    secure_cookies: bool = True  # False only for plain-HTTP loopback dev
    memcached: list[str] = field(default_factory=list)  # "127.0.0.1:11211"
    cache_ttl: int = 300
    # HMAC key for every memcached entry (>= 16 chars, the same on every backend; generated at deploy
    # time). Empty: derived from cookie_secret. A forged or tampered entry is a miss (docs/security.md)
    cache_secret: str = ""
    # internal TLS to workers (mutual)
    worker_cert: str | None = None
    worker_key: str | None = None
    worker_ca: str | None = None
    workers: list[WorkerEndpoint] = field(default_factory=list)  # registered in the DB at start
    heartbeat_seconds: float = 5.0
    heartbeat_timeout: float = 15.0  # connected but no good status for this long: down (unreachable: at once)
    autosave_seconds: float = 60.0
    idle_close_seconds: float = 1800.0
    repack_after: int = 12  # a bundle chain longer than this is replaced by one base bundle (0: never);
    # each incremental bundle costs a cold open about 12 ms (one git process), a repack one base bundle
    static_dir: str | None = None  # serve static/ (dev); production: nginx
    max_message: int = 4 * 1024 * 1024  # largest client frame accepted over SockJS
    # login throttling (sagews/backend/lockout.py): per account + source (device cookie, else IP)
    login_free_attempts: int = 5  # failures before backoff
    login_backoff_seconds: float = 1.0  # first delay, doubling per further failure
    login_backoff_max_seconds: float = 900.0
    login_window_seconds: int = 3600  # failures are forgotten this long after the last one
    login_account_failures: int = 100  # per account from sources without its device cookie, per window
    login_account_interval_seconds: float = 30.0  # then one attempt per this interval
    login_ip_failures: int = 300  # per IP over all accounts (no device cookie), per window
    signups_per_ip: int = 30  # per 5 minutes, per backend process
    password_threads: int = 1  # argon2 runs here (64 MiB, ~0.1 s of CPU each): a login storm takes one core
    # fairness (docs/security.md): defaults for accounts whose own limit (accounts table) is NULL
    max_open_workspaces: int = 10  # workspaces of one owner placed on workers at once (0: no limit)
    max_stored_mb: int = 1024  # stored bundle bytes of one owner's workspaces (0: no limit)
    # per live connection: requests in flight, queued behind them, and a token bucket (per second)
    conn_inflight: int = 8
    conn_queue: int = 64
    conn_rate: float = 100.0
    conn_burst: int = 200
    account_rate: float = 300.0  # token bucket over all connections of one account on this backend
    account_burst: int = 600
    account_inflight: int = 8  # requests of one account in flight at once on this backend (at a worker,
    # another user's request waits behind at most this many of one account's)
    account_heavy_rate: float = 5.0  # open/restart/save/history/publish per second per account
    account_heavy_burst: int = 30
    presence_interval: float = 1.0  # presence frames per workspace coalesced to one per interval
    purge_after_days: float = 30.0  # deleted workspaces' rows and bundles are purged after this
    allowed_origins: list[str] = field(default_factory=list)  # SockJS Origin check; empty: same host
    signup: bool = True
    # who may read /metrics (client address, after X-Forwarded-For when xheaders is on)
    metrics_networks: list[str] = field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
    )
    xheaders: bool = False  # trust X-Forwarded-For / X-Real-Ip (only behind HAProxy)
    shutdown_grace_seconds: float = 10.0  # SIGTERM: requests in flight may finish for this long
    logging: dict[str, Any] = field(default_factory=dict)  # a [logging] ClientConfig table (log server)
    db: DBConfig = field(default_factory=DBConfig)


def from_dict(data: dict[str, Any]) -> BackendConfig:
    data = dict(data)
    db = data.pop("db", None)
    if isinstance(data.get("backend"), dict):
        data = {**data.pop("backend"), **data}
    known = {f.name for f in fields(BackendConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown backend setting(s): {', '.join(sorted(unknown))}")
    if "workers" in data:
        data["workers"] = [WorkerEndpoint(**w) for w in data["workers"]]
    cfg = BackendConfig(**data)
    if isinstance(db, dict):
        cfg.db = db_from_dict(db)
    cfg.db.url = env_url() or cfg.db.url
    return cfg


def load(path: str | Path | None) -> BackendConfig:
    if path is None:
        return from_dict({})
    p = Path(path)
    text = p.read_text()
    return from_dict(json.loads(text) if p.suffix == ".json" else tomllib.loads(text))
