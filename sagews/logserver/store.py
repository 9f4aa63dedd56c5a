"""Idempotent batch inserts of validated records (PostgreSQL fast path, SQLAlchemy elsewhere)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import Engine, exc, select

from sagews.db.models import LogRecord

_PG_SQL = (
    "INSERT INTO log_records (rid, ts, service, host, pid, level, logger, message, exc, extra) "
    "VALUES %s ON CONFLICT (rid) DO NOTHING RETURNING 1"
)
_PG_TEMPLATE = "(%s, to_timestamp(%s), %s, %s, %s, %s, %s, %s, %s, %s::jsonb)"

# Errors meaning "the database is not reachable now" (spool and retry) rather than "bad data".
UNAVAILABLE: tuple[type[BaseException], ...] = (exc.OperationalError, exc.InterfaceError, exc.TimeoutError)
try:
    import psycopg2

    UNAVAILABLE += (psycopg2.OperationalError, psycopg2.InterfaceError)
except ImportError:  # pragma: no cover
    pass


def _row(r: dict[str, Any]) -> tuple[Any, ...]:
    extra = r.get("extra")
    return (
        r["rid"], r["ts"], r["service"], r["host"], r["pid"], r["level"], r["logger"], r["msg"],
        r.get("exc"), None if extra is None else json.dumps(extra),
    )  # fmt: skip


def insert(engine: Engine, records: list[dict[str, Any]]) -> int:
    """Insert ``records`` in one transaction, skipping rids already stored; returns rows added."""
    if not records:
        return 0
    if engine.dialect.name == "postgresql":
        from psycopg2.extras import execute_values

        conn = engine.raw_connection()
        try:
            with conn.cursor() as cur:
                rows = execute_values(
                    cur, _PG_SQL, [_row(r) for r in records], _PG_TEMPLATE, 2000, fetch=True
                )
            conn.commit()
            return len(rows)
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()
    values = [
        {
            "rid": r["rid"], "ts": dt.datetime.fromtimestamp(r["ts"], dt.UTC), "service": r["service"],
            "host": r["host"], "pid": r["pid"], "level": r["level"], "logger": r["logger"],
            "message": r["msg"], "exc": r.get("exc"), "extra": r.get("extra"),
        }
        for r in records
    ]  # fmt: skip
    table = LogRecord.__table__
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            result = conn.execute(sqlite_insert(table).on_conflict_do_nothing(index_elements=["rid"]), values)
            return max(result.rowcount, 0)
        have = set(conn.scalars(select(table.c.rid).where(table.c.rid.in_([v["rid"] for v in values]))))
        fresh = [v for v in values if v["rid"] not in have]
        if fresh:
            conn.execute(table.insert(), fresh)
        return len(fresh)


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
