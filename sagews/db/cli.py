"""`sagews db`: schema migrations.

sagews db upgrade [--url URL] [--config FILE] [REVISION]
sagews db current [--url URL] [--config FILE]
sagews db heads
"""

from __future__ import annotations

import argparse

from sagews.db import config as dbconfig
from sagews.db import migrate


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sagews db", description="database schema migrations")
    sub = parser.add_subparsers(dest="action", required=True)
    for name, help_ in [
        ("upgrade", "migrate the schema up (default: to head)"),
        ("downgrade", "migrate the schema down to REVISION"),
        ("current", "print the schema revision of the database"),
        ("heads", "print the newest revision this code knows"),
    ]:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--url", help=f"database URL (default: ${dbconfig.URL_ENV} or {dbconfig.DEFAULT_URL})")
        p.add_argument("--config", help="service config file with a [db] table")
        if name in {"upgrade", "downgrade"}:
            p.add_argument("revision", nargs="?" if name == "upgrade" else None, default="head")
    args = parser.parse_args(argv)
    if args.action == "heads":
        print(migrate.head())
        return 0
    cfg = dbconfig.load(args.config, url=args.url)
    if args.action == "upgrade":
        migrate.upgrade(cfg.url, args.revision)
        print(f"database at {migrate.current(cfg.url)}")
    elif args.action == "downgrade":
        migrate.downgrade(cfg.url, args.revision)
        print(f"database at {migrate.current(cfg.url)}")
    else:
        print(migrate.current(cfg.url))
    return 0
