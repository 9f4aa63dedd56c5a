"""`sagews logs`: tail and filter the log records stored by the log server.

sagews logs [--url URL] [--service S] [--host H] [--level WARNING] [--since 10m] [--until ISO]
            [--grep TEXT] [-n 100] [-f]
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import re
import time
from typing import Any

from sqlalchemy import select

from sagews.db import config as dbconfig
from sagews.db.engine import make_engine
from sagews.db.models import LogRecord

_REL = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_time(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``10m``, ``2h``, ``1d`` ago, or an ISO 8601 time (UTC if no offset)."""
    m = _REL.match(text)
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return (now or dt.datetime.now(dt.UTC)) - dt.timedelta(**{unit: float(m.group(1))})
    t = dt.datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def parse_level(text: str) -> int:
    if text.isdigit():
        return int(text)
    level = logging.getLevelName(text.upper())
    if not isinstance(level, int):
        raise argparse.ArgumentTypeError(f"unknown level {text!r}")
    return level


def fmt(r: LogRecord) -> str:
    line = (
        f"{r.ts.isoformat(timespec='milliseconds')} {r.host} {r.service}[{r.pid}] "
        f"{logging.getLevelName(r.level)} {r.logger}: {r.message}"
    )
    return line + ("\n" + r.exc if r.exc else "")


def query(args: argparse.Namespace, after_id: int | None = None) -> Any:
    q = select(LogRecord)
    if args.service:
        q = q.where(LogRecord.service == args.service)
    if args.host:
        q = q.where(LogRecord.host == args.host)
    if args.level is not None:
        q = q.where(LogRecord.level >= args.level)
    if args.since:
        q = q.where(LogRecord.ts >= parse_time(args.since))
    if args.until:
        q = q.where(LogRecord.ts <= parse_time(args.until))
    if args.grep:
        q = q.where(LogRecord.message.contains(args.grep, autoescape=True))
    if after_id is not None:
        return q.where(LogRecord.id > after_id).order_by(LogRecord.id).limit(10000)
    return q.order_by(LogRecord.id.desc()).limit(args.lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="sagews logs", description="show log records stored by the log server")
    p.add_argument("--url", help=f"database URL (default: ${dbconfig.URL_ENV} or {dbconfig.DEFAULT_URL})")
    p.add_argument("--config", help="service config file with a [db] table")
    p.add_argument("--service")
    p.add_argument("--host")
    p.add_argument("--level", type=parse_level, help="minimum level (name or number)")
    p.add_argument("--since", help="e.g. 10m, 2h, 1d or an ISO time")
    p.add_argument("--until")
    p.add_argument("--grep", help="substring of the message")
    p.add_argument("-n", "--lines", type=int, default=100)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    p.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    engine = make_engine(dbconfig.load(args.config, url=args.url))
    try:
        with engine.connect() as conn:
            from sqlalchemy.orm import Session

            with Session(conn) as s:
                rows = list(reversed(s.scalars(query(args)).all()))
                for r in rows:
                    print(fmt(r), flush=True)
                last = (
                    rows[-1].id
                    if rows
                    else (s.scalar(select(LogRecord.id).order_by(LogRecord.id.desc())) or 0)
                )
        while args.follow:
            time.sleep(args.interval)
            with engine.connect() as conn, Session(conn) as s:
                for r in s.scalars(query(args, last)).all():
                    print(fmt(r), flush=True)
                    last = r.id
    except KeyboardInterrupt:
        pass
    finally:
        engine.dispose()
    return 0
