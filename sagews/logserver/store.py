"""Idempotent batch inserts of validated records (PostgreSQL fast path, SQLAlchemy elsewhere)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import time
from typing import Any

from sqlalchemy import Engine, exc, select

from sagews.db.models import LogRecord

# PostgreSQL fast path: COPY (CSV) straight into log_records, one transaction per coalesced batch.
# The UNIQUE index on rid refuses a record stored before (a batch re-sent after a lost ack, a spool
# replay); then the transaction is rolled back and the same CSV goes through a temporary staging
# table and one INSERT ... SELECT ... ON CONFLICT (rid) DO NOTHING. Duplicates are rare, and the
# direct COPY costs PostgreSQL about 40 % less CPU per row than the staging path
# (docs/benchmarks.md, "Log server").
_COLUMNS = "rid, ts, service, host, pid, level, logger, message, exc, extra"
_PG_COPY_DIRECT = f"COPY log_records ({_COLUMNS}) FROM STDIN WITH (FORMAT csv, FORCE_NULL (exc, extra))"
_PG_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS log_stage_v2 (rid text, ts timestamptz, service text, host text, "
    "pid integer, level smallint, logger text, message text, exc text, extra jsonb) ON COMMIT DELETE ROWS"
)
_PG_COPY_STAGE = "COPY log_stage_v2 FROM STDIN WITH (FORMAT csv, FORCE_NULL (exc, extra))"
_PG_MOVE = (
    f"INSERT INTO log_records ({_COLUMNS}) SELECT {_COLUMNS} FROM log_stage_v2 ON CONFLICT (rid) DO NOTHING"  # noqa: S608 (constants)
)

_ts_cache: dict[int, str] = {}


def _ts_text(ts: float) -> str:
    """``ts`` (seconds since the epoch) as a timestamptz literal, microseconds, UTC; the formatted
    second is cached (records of one batch share a few seconds)."""
    sec = int(ts)
    micro = round((ts - sec) * 1e6)
    if micro >= 1_000_000:
        sec, micro = sec + 1, micro - 1_000_000
    head = _ts_cache.get(sec)
    if head is None:
        if len(_ts_cache) > 4096:
            _ts_cache.clear()
        head = _ts_cache[sec] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sec))
    return f"{head}.{micro:06d}+00"


def to_csv(records: list[dict[str, Any]]) -> str:
    """Validated records as the CSV that both COPY statements read (the log server builds it on its
    event loop while the writer thread waits on PostgreSQL with the previous batch)."""
    buf = io.StringIO()
    csv.writer(buf).writerows(
        (r["rid"], _ts_text(r["ts"]), r["service"], r["host"], r["pid"], r["level"], r["logger"], r["msg"],
         r.get("exc") or "", "" if r.get("extra") is None else json.dumps(r["extra"]))
        for r in records
    )  # fmt: skip
    return buf.getvalue()


def _insert_pg(engine: Engine, records: list[dict[str, Any]], text: str | None) -> int:
    text = to_csv(records) if text is None else text
    conn = engine.raw_connection()
    try:
        try:
            with conn.cursor() as cur:
                cur.copy_expert(_PG_COPY_DIRECT, io.StringIO(text))
                added = int(cur.rowcount)
            conn.commit()
            return added
        except _UNIQUE_VIOLATION:
            conn.rollback()  # some rid is stored already: the slow path skips exactly those
        with conn.cursor() as cur:
            cur.execute(_PG_STAGE)
            cur.copy_expert(_PG_COPY_STAGE, io.StringIO(text))
            cur.execute(_PG_MOVE)
            added = int(cur.rowcount)
        conn.commit()
        return added
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()


# Errors meaning "the database is not reachable now" (spool and retry) rather than "bad data".
UNAVAILABLE: tuple[type[BaseException], ...] = (exc.OperationalError, exc.InterfaceError, exc.TimeoutError)
_UNIQUE_VIOLATION: tuple[type[BaseException], ...] = ()
try:
    import psycopg2
    import psycopg2.errors

    # Also "unavailable", so records are spooled and replayed rather than dropped: the schema not there
    # yet (a log server started before `sagews db upgrade`) and a primary turned replica (failover).
    UNAVAILABLE += (
        psycopg2.OperationalError,
        psycopg2.InterfaceError,
        psycopg2.errors.UndefinedTable,
        psycopg2.errors.ReadOnlySqlTransaction,
    )
    _UNIQUE_VIOLATION = (psycopg2.errors.UniqueViolation,)
except ImportError:  # pragma: no cover
    pass


def insert(engine: Engine, records: list[dict[str, Any]], csv_text: str | None = None) -> int:
    """Insert ``records`` in one transaction, skipping rids already stored; returns rows added.
    ``csv_text``: ``to_csv(records)`` if the caller built it already (PostgreSQL only)."""
    if not records:
        return 0
    if engine.dialect.name == "postgresql":
        return _insert_pg(engine, records, csv_text)
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
