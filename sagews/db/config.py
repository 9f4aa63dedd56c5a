"""Database settings shared by every sagews service (the ``[db]`` table of a service's config).

Every field is documented in docs/database.md.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

DEFAULT_URL = "sqlite:///~/.sagews/sagews.db"
URL_ENV = "SAGEWS_DB_URL"


@dataclass
class DBConfig:
    url: str = DEFAULT_URL
    pool_size: int = 5  # persistent connections per process (and threads of Database.run)
    max_overflow: int = 2  # extra short-lived connections under bursts
    pool_timeout: float = 10.0  # seconds to wait for a pooled connection before failing
    pool_recycle: int = 1800  # seconds after which a connection is replaced
    pre_ping: bool = True  # test a pooled connection before use (survives a DB restart)
    # PostgreSQL links. With a multi-host URL (host=a,b target_session_attrs=read-write) libpq tries
    # the hosts in order: connect_timeout applies per host (libpq's minimum is 2), so a dead host
    # costs that much per new connection. TCP keepalives and tcp_user_timeout end a request to a
    # primary that vanished (a killed host sends no RST) after about max(keepalives_idle,
    # tcp_user_timeout): the caller gets an error (db_unavailable) instead of hanging for minutes.
    connect_timeout: int = 2  # seconds, per host
    keepalives_idle: int = 2  # seconds of silence before the first probe
    keepalives_interval: int = 1  # seconds between probes
    keepalives_count: int = 3
    tcp_user_timeout: int = 5000  # milliseconds data (or a probe) may stay unacknowledged
    ssl_ca: str | None = None  # CA file: when set, PostgreSQL links use sslmode=verify-full
    ssl_cert: str | None = None  # optional client certificate for PostgreSQL
    ssl_key: str | None = None
    application_name: str = "sagews"
    echo: bool = False


def from_dict(data: dict[str, Any]) -> DBConfig:
    known = {f.name for f in fields(DBConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown db setting(s): {', '.join(sorted(unknown))}")
    return DBConfig(**data)


def env_url() -> str | None:
    """$SAGEWS_DB_URL: how a deployed service learns its database (the roles write it to
    /etc/sagews/database.env, read by the units' EnvironmentFile=). It wins over a config file's url."""
    return os.environ.get(URL_ENV) or None


def load(path: str | Path | None = None, *, url: str | None = None) -> DBConfig:
    """Defaults < ``[db]`` table of a TOML/JSON file < $SAGEWS_DB_URL < ``url``."""
    cfg = DBConfig()
    if path is not None:
        p = Path(path)
        data: dict[str, Any] = (
            json.loads(p.read_text()) if p.suffix == ".json" else tomllib.loads(p.read_text())
        )
        if isinstance(data.get("db"), dict):
            data = data["db"]
        cfg = from_dict(data)
    cfg.url = url or env_url() or cfg.url
    return cfg
