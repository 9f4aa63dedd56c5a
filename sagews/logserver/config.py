"""Log server and log client configuration (``[logserver]`` and ``[logging]`` tables)."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 6200
    # the host's certificate from the pki role, and the appliance CA
    cert: str = "/etc/ssl/sagews/server.crt"
    key: str = "/etc/ssl/sagews/server.key"
    ca: str = "/etc/ssl/sagews/ca.crt"
    allowed_clients: list[str] = field(default_factory=list)  # certificate CNs; empty: any cert from the CA
    db: dict[str, Any] = field(default_factory=dict)  # a DBConfig table (url, pool_size, ...)
    db_connections: int = 2  # the writer uses at most this many connections
    spool_dir: str = "/var/lib/sagews/logserver/spool"
    spool_max_mb: float = 1024
    max_frame: int = 4 << 20  # bytes; a larger frame is refused and the connection closed
    max_message: int = 32 * 1024  # characters of msg/exc kept
    max_extra: int = 8 * 1024  # bytes of extra JSON kept
    max_records_per_frame: int = 5000
    batch_rows: int = 5000  # the writer coalesces waiting frames into one transaction up to this
    queue_frames: int = 256  # frames waiting for the writer; readers pause beyond this (backpressure)
    max_pending_replies: int = 16  # per connection: frames read but not yet answered (client pipelining)
    db_retry_seconds: float = 2.0  # while the DB is down, probe it this often and then replay the spool
    handshake_timeout: float = 10.0
    idle_timeout: float = 3600.0


@dataclass
class ClientConfig:
    servers: list[str] = field(default_factory=list)  # "host:port", primary first, then failovers
    cert: str | None = None  # e.g. /etc/ssl/sagews/logserver-client.crt (pki role)
    key: str | None = None
    ca: str = "/etc/ssl/sagews/ca.crt"
    spool_dir: str = "/var/lib/sagews/logspool"
    spool_max_mb: float = 256
    queue_max: int = 100_000  # records waiting in memory; beyond: dropped and counted
    batch_max: int = 1000
    window: int = 4  # batches sent before their acknowledgement arrives (1: stop-and-wait)
    level: str = "INFO"
    connect_timeout: float = 2.0
    ack_timeout: float = 10.0
    retry_max_seconds: float = 5.0  # backoff cap between reconnect rounds while every server is down
    failback_seconds: float = 60.0  # on a failover server, try the primary again after this long


def _load(cls: type, path: str | Path | None, table: str) -> Any:
    if path is None:
        return cls()
    p = Path(path)
    data: dict[str, Any] = json.loads(p.read_text()) if p.suffix == ".json" else tomllib.loads(p.read_text())
    if isinstance(data.get(table), dict):
        data = data[table]
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {table} setting(s): {', '.join(sorted(unknown))}")
    return cls(**data)


def load_server(path: str | Path | None) -> ServerConfig:
    result: ServerConfig = _load(ServerConfig, path, "logserver")
    return result


def load_client(path: str | Path | None) -> ClientConfig:
    result: ClientConfig = _load(ClientConfig, path, "logging")
    return result


def load_own_logging(path: str | Path | None) -> ClientConfig | None:
    """The ``[logging]`` table of a log server's own config file (where its own records go), if any."""
    if path is None:
        return None
    p = Path(path)
    data: dict[str, Any] = json.loads(p.read_text()) if p.suffix == ".json" else tomllib.loads(p.read_text())
    return load_client(path) if isinstance(data.get("logging"), dict) else None
