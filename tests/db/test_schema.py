"""The schema on real PostgreSQL and SQLite: migrations match the models, constraints hold."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sagews import cli
from sagews.db import Database, DBConfig, make_engine, migrate
from sagews.db.engine import host_order, pg_connect_args
from sagews.db.models import (
    Account,
    AuthSession,
    Base,
    Collaborator,
    LogRecord,
    Publication,
    Role,
    Worker,
    WorkerState,
    Workspace,
    WorkspaceBundle,
)

TABLES = {
    "accounts", "sessions", "workspaces", "collaborators", "workspace_bundles",
    "workers", "publications", "log_records",
}  # fmt: skip


def test_migrations_match_models(db_url: str) -> None:
    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    try:
        assert set(inspect(engine).get_table_names()) >= TABLES
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, Base.metadata)
        assert diff == [], diff
        assert migrate.current(engine) == migrate.head()
    finally:
        engine.dispose()


def test_downgrade_and_upgrade_again(db_url: str) -> None:
    migrate.upgrade(db_url)
    migrate.downgrade(db_url, "base")
    engine = make_engine(db_url)
    try:
        assert not TABLES & set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    migrate.upgrade(db_url)
    assert migrate.current(db_url) == migrate.head()


def _account(s: Session, email: str = "a@example.org") -> Account:
    a = Account(email=email, name="A", password_hash="x")
    s.add(a)
    s.flush()
    return a


def test_constraints_and_cascades(db_url: str) -> None:
    migrate.upgrade(db_url)
    db = Database(db_url)
    try:
        with db.sessions.begin() as s:
            a = _account(s)
            b = _account(s, "b@example.org")
            w = Worker(address="10.0.0.5", port=6100, capacity=100, state=WorkerState.up, version="0.1")
            s.add(w)
            s.flush()
            ws = Workspace(id=str(uuid.uuid4()), name="w", owner_id=a.id, worker_id=w.id)
            s.add(ws)
            s.flush()
            s.add_all(
                [
                    Collaborator(workspace_id=ws.id, account_id=a.id, role=Role.owner),
                    Collaborator(workspace_id=ws.id, account_id=b.id, role=Role.viewer),
                    WorkspaceBundle(
                        workspace_id=ws.id,
                        seq=0,
                        data=b"\x00" * 10,
                        sha256="0" * 64,
                        size=10,
                        commit="c" * 40,
                    ),
                    Publication(workspace_id=ws.id, path="a.sagews", slug="abc", html="<p>"),
                    AuthSession(
                        token_hash="f" * 64,
                        account_id=a.id,
                        expires=dt.datetime.now(dt.UTC) + dt.timedelta(1),
                    ),
                ]
            )
            ws_id, a_id, w_id = ws.id, a.id, w.id

        def fails(obj: object) -> None:
            with pytest.raises(IntegrityError), db.sessions.begin() as s:
                s.add(obj)

        fails(Account(email="a@example.org", name="dup"))
        fails(Collaborator(workspace_id=ws_id, account_id=a_id, role=Role.editor))
        fails(WorkspaceBundle(workspace_id=ws_id, seq=0, data=b"", sha256="", size=0, commit=""))
        fails(Publication(workspace_id=ws_id, path="b", slug="abc", html=""))
        fails(Worker(address="10.0.0.5", port=6100, capacity=1))

        with db.sessions.begin() as s:
            ws2 = s.get(Workspace, ws_id)
            assert ws2 is not None
            assert ws2.created.tzinfo is not None and ws2.created.utcoffset() == dt.timedelta(0)
            assert {c.role for c in ws2.collaborators} == {Role.owner, Role.viewer}
            bundle = s.scalars(select(WorkspaceBundle)).one()
            assert bundle.data == b"\x00" * 10
            s.delete(s.get(Worker, w_id))
        with db.sessions.begin() as s:
            ws3 = s.get(Workspace, ws_id)
            assert ws3 is not None and ws3.worker_id is None  # SET NULL
            s.delete(ws3)
        with db.sessions.begin() as s:
            for model in (Collaborator, WorkspaceBundle, Publication):
                assert s.scalar(select(func.count()).select_from(model)) == 0, model
            s.delete(s.get(Account, a_id))
        with db.sessions.begin() as s:
            assert s.scalar(select(func.count()).select_from(AuthSession)) == 0
    finally:
        db.close()


def test_role_check_constraint(db_url: str) -> None:
    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO accounts (email, name) VALUES ('x@y', 'x')")
            conn.exec_driver_sql(
                "INSERT INTO workspaces (id, name, owner_id) VALUES ('w1', 'w', "
                "(SELECT id FROM accounts WHERE email = 'x@y'))"
            )
            conn.exec_driver_sql(
                "INSERT INTO collaborators (workspace_id, account_id, role) VALUES "
                "('w1', (SELECT id FROM accounts WHERE email = 'x@y'), 'admin')"
            )
    finally:
        engine.dispose()


async def test_async_run_does_not_block_loop(db_url: str) -> None:
    migrate.upgrade(db_url)
    db = Database(DBConfig(url=db_url, pool_size=3))
    try:

        def add(s: Session, i: int) -> int:
            s.add(LogRecord(rid=f"r{i}", ts=dt.datetime.now(dt.UTC), service="t", host="h", pid=1,
                            level=20, logger="l", message=f"m{i}", extra={"i": i}))  # fmt: skip
            return i

        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.create_task(ticker())
        results = await asyncio.gather(*(db.run(add, i) for i in range(20)))
        t.cancel()
        assert sorted(results) == list(range(20))
        assert ticks > 0
        count = await db.run(lambda s: s.scalar(select(func.count()).select_from(LogRecord)))
        assert count == 20
        extra = await db.run(lambda s: s.scalar(select(LogRecord.extra).where(LogRecord.rid == "r7")))
        assert extra == {"i": 7}
    finally:
        db.close()


def test_cli_upgrade(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["db", "upgrade", "--url", sqlite_url]) == 0
    assert migrate.head() in capsys.readouterr().out
    assert cli.main(["db", "current", "--url", sqlite_url]) == 0
    assert capsys.readouterr().out.strip() == migrate.head()


def test_engine_settings() -> None:
    cfg = DBConfig(url="postgresql://u@db.example/sagews", pool_size=7, max_overflow=3, pool_timeout=4,
                   ssl_ca="/etc/sagews/pki/ca.pem")  # fmt: skip
    engine = make_engine(cfg)
    try:
        assert engine.pool.size() == 7  # type: ignore[attr-defined]
        assert engine.pool._max_overflow == 3  # type: ignore[attr-defined]
        assert engine.pool._timeout == 4  # type: ignore[attr-defined]
        assert engine.url.drivername == "postgresql+psycopg2"
        args = pg_connect_args(cfg)
        assert args["sslmode"] == "verify-full" and args["sslrootcert"] == "/etc/sagews/pki/ca.pem"
        assert "sslmode" not in pg_connect_args(DBConfig())
    finally:
        engine.dispose()


def test_a_multi_host_url_skips_a_dead_host_with_failover_timeouts(pg_url: str) -> None:
    """The URL shape the app roles render (every database host, target_session_attrs=read-write):
    libpq skips a host that refuses and connects to the writable one, with the DB layer's keepalive
    and tcp_user_timeout settings in force (docs/database.md)."""
    url = make_url(pg_url)
    dead = "127.0.0.1:1"  # nothing listens on port 1: refused at once
    multi = url.set(host=None, port=None, query={
        **url.query, "host": [dead, f"{url.host}:{url.port}"], "target_session_attrs": "read-write",
    })  # fmt: skip
    engine = make_engine(DBConfig(url=multi.render_as_string(hide_password=False)))
    try:
        with engine.connect() as conn:
            dsn = conn.connection.dbapi_connection.get_dsn_parameters()  # type: ignore[union-attr]
            assert conn.exec_driver_sql("SELECT inet_server_port()").scalar_one() == url.port
        # The next connections try the host that worked first (no connect_timeout on the dead one).
        order = host_order(engine)
        assert order is not None and order.current() == (f"{url.host},127.0.0.1", f"{url.port},1")
    finally:
        engine.dispose()
    assert (dsn["keepalives_idle"], dsn["keepalives_interval"], dsn["tcp_user_timeout"]) == ("2", "1", "5000")
    assert dsn["target_session_attrs"] == "read-write"


def test_sqlite_home_path_is_expanded(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HOME", str(tmp_path))
    engine = make_engine("sqlite:///~/.sagews/sagews.db")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert (tmp_path / ".sagews" / "sagews.db").exists()
    finally:
        engine.dispose()
