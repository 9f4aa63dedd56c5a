"""Engine factory and the async bridge for Tornado/asyncio code.

Callers on the IOLoop never touch a connection directly: ``await db.run(fn, *args)`` runs
``fn(session, *args)`` inside a transaction in a bounded thread pool (as many threads as pooled
connections, so a thread never waits for a connection). See docs/database.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import sessionmaker

from sagews.db.config import DBConfig

T = TypeVar("T")


def normalize_url(url: str | URL) -> URL:
    """Expand ``~`` in SQLite paths, create the parent directory, default PostgreSQL to psycopg2."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        path = Path(u.database).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        u = u.set(database=str(path))
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg2")
    return u


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def pg_connect_args(cfg: DBConfig) -> dict[str, Any]:
    """libpq options: timeouts and keepalives (a vanished primary ends in an error, not a hang; see
    docs/database.md), and full certificate verification when a CA is configured."""
    args: dict[str, Any] = {
        "connect_timeout": cfg.connect_timeout,
        "application_name": cfg.application_name,
        "keepalives": 1,
        "keepalives_idle": cfg.keepalives_idle,
        "keepalives_interval": cfg.keepalives_interval,
        "keepalives_count": cfg.keepalives_count,
        "tcp_user_timeout": cfg.tcp_user_timeout,
    }
    if cfg.ssl_ca:
        args.update(sslmode="verify-full", sslrootcert=cfg.ssl_ca)
        if cfg.ssl_cert:
            args.update(sslcert=cfg.ssl_cert, sslkey=cfg.ssl_key or "")
    return args


class HostOrder:
    """The order libpq tries the hosts of a multi-host URL in (docs/database.md).

    libpq tries them in order and a dead host costs ``connect_timeout`` per attempt. So the host that
    last accepted a read-write session goes first, and after an attempt that found no writable host
    the next one does: after a failover the pool stops paying for the dead old primary on every new
    connection once one connection found the new primary."""

    def __init__(self, hosts: str, ports: str) -> None:
        self._hosts = hosts.split(",")
        port_list = str(ports).split(",")
        self._ports = port_list * len(self._hosts) if len(port_list) == 1 else port_list
        self._lock = threading.Lock()

    def current(self) -> tuple[str, str]:
        with self._lock:
            return ",".join(self._hosts), ",".join(self._ports)

    def _first(self, i: int) -> None:
        self._hosts = self._hosts[i:] + self._hosts[:i]
        self._ports = self._ports[i:] + self._ports[:i]

    def connected(self, host: str, port: int | str) -> None:
        with self._lock:
            for i, (h, p) in enumerate(zip(self._hosts, self._ports, strict=True)):
                if h == host and str(p) == str(port):
                    self._first(i)
                    return

    def failed(self) -> None:
        with self._lock:
            self._first(1)


def _order_hosts(engine: Engine) -> HostOrder | None:
    """For a PostgreSQL URL naming several hosts, connect through a :class:`HostOrder`."""
    _args, params = engine.dialect.create_connect_args(engine.url)
    if "," not in str(params.get("host", "")):
        return None
    order = HostOrder(str(params["host"]), str(params.get("port", "5432")))

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        cparams["host"], cparams["port"] = order.current()
        try:
            conn = dialect.dbapi.connect(*cargs, **cparams)
        except Exception:
            order.failed()
            raise
        order.connected(conn.info.host, conn.info.port)
        return conn

    return order


def make_engine(cfg: DBConfig | str, **overrides: Any) -> Engine:
    """A pooled engine: pool_size/max_overflow/pool_timeout/pre_ping from ``cfg``;
    ``sslmode=verify-full`` with ``sslrootcert`` when ``cfg.ssl_ca`` is set (PostgreSQL)."""
    if isinstance(cfg, str):
        cfg = DBConfig(url=cfg)
    url = normalize_url(cfg.url)
    kwargs: dict[str, Any] = {"echo": cfg.echo, "pool_pre_ping": cfg.pre_ping}
    if url.get_backend_name() == "sqlite":
        if url.database in (None, "", ":memory:"):
            from sqlalchemy.pool import StaticPool

            kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            kwargs.update(
                pool_size=cfg.pool_size, max_overflow=cfg.max_overflow, pool_timeout=cfg.pool_timeout
            )
    else:
        connect_args = pg_connect_args(cfg) if url.get_backend_name() == "postgresql" else {}
        # what the URL says itself (a deployment's multi-host URL with its own timeout, TLS) wins
        connect_args = {k: v for k, v in connect_args.items() if k not in url.query}
        kwargs.update(
            pool_size=cfg.pool_size,
            max_overflow=cfg.max_overflow,
            pool_timeout=cfg.pool_timeout,
            pool_recycle=cfg.pool_recycle,
            connect_args=connect_args,
        )
    kwargs.update(overrides)
    engine = create_engine(url, **kwargs)
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    elif url.get_backend_name() == "postgresql":
        order = _order_hosts(engine)
        if order is not None:
            _HOST_ORDERS[engine] = order
    return engine


_HOST_ORDERS: weakref.WeakKeyDictionary[Engine, HostOrder] = weakref.WeakKeyDictionary()


def host_order(engine: Engine) -> HostOrder | None:
    """The :class:`HostOrder` of an engine over a multi-host URL, else None."""
    return _HOST_ORDERS.get(engine)


class Database:
    """An engine, a session factory and a bounded executor for running DB work off the event loop."""

    def __init__(self, cfg: DBConfig | str, *, threads: int | None = None) -> None:
        self.config = cfg if isinstance(cfg, DBConfig) else DBConfig(url=cfg)
        self.engine = make_engine(self.config)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        n = threads or max(1, self.config.pool_size)
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=n, thread_name_prefix="sagews-db")

    def transaction(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(session, ...)`` in a transaction (commit on return, rollback on exception)."""
        with self.sessions.begin() as session:
            return fn(session, *args, **kwargs)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``await db.run(fn, *args)``: :meth:`transaction` in the DB thread pool; never blocks the loop."""
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, self.transaction, fn, *args, **kwargs)
        return await loop.run_in_executor(self.executor, call)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.engine.dispose()
