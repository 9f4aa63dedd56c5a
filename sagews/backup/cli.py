"""``sagews backup status``: the state of the database backups, for operators and monitoring.

Run it on the backup host (everything) or on a database host (the repository's contents, and on
the primary the WAL archive lag). Exit status: 0 healthy, 1 a problem (printed), 2 pgBackRest could
not be asked. ``--json`` prints one object (the contract for /metrics, docs/backup.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from sagews.backup.status import Status, StatusError, collect


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def problems(status: Status, now: dt.datetime, max_age: dt.timedelta) -> list[str]:
    """What an operator must look at; empty when the backups can be trusted."""
    found = []
    if not status.ok:
        found.append(f"stanza: {status.message}" + ("" if status.last("full") else " (no full backup)"))
    newest = max((b.finished for b in status.backups), default=None)
    if newest is not None and now - newest > max_age:
        found.append(f"the newest backup is older than {max_age}")
    for job, rec in sorted(status.jobs.items()):
        if rec.get("result") != "success":
            found.append(f"last {job} run failed ({rec.get('result')}, {rec.get('finished')})")
    if status.archive_failures:
        found.append(f"WAL archiving failed {status.archive_failures} time(s) (pg_stat_archiver)")
    return found


def render(status: Status, now: dt.datetime, found: list[str]) -> str:
    lines = [f"stanza {status.stanza}: {'ok' if not found else 'PROBLEM'} ({status.message})"]
    for kind in ("full", "diff", "incr"):
        b = status.last(kind)
        if b is not None:
            took = (b.finished - b.started).total_seconds()
            lines.append(
                f"  last {kind}: {b.label}, finished {b.finished:%Y-%m-%d %H:%M:%S}Z "
                f"({_age((now - b.finished).total_seconds())}), took {took:.0f} s, "
                f"database {_size(b.database_bytes)}, in repository {_size(b.repository_bytes)}"
            )
        elif kind != "incr":
            lines.append(f"  last {kind}: none")
    if status.wal_max:
        lines.append(f"  archived WAL: {status.wal_min} .. {status.wal_max}")
    if status.newest_restorable:
        age = (now - status.newest_restorable).total_seconds()
        lines.append(
            f"  newest restorable point: {status.newest_restorable:%Y-%m-%d %H:%M:%S}Z ({_age(age)})"
        )
    if status.archive_lag_bytes is not None:
        lines.append(
            f"  WAL archive lag (this primary): {_size(status.archive_lag_bytes)}, "
            f"{status.archive_lag_seconds or 0:.0f} s; failures {status.archive_failures}"
        )
    for job, rec in sorted(status.jobs.items()):
        lines.append(f"  last {job} job: {rec.get('result')} at {rec.get('finished')}")
    lines += [f"  ! {p}" for p in found]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["report"]:  # the timers' units: a job's outcome to the log servers
        from sagews.backup import report

        return report.main(argv[1:])
    ap = argparse.ArgumentParser(prog="sagews backup", description="database backups (pgBackRest)")
    sub = ap.add_subparsers(dest="command", required=True)
    st = sub.add_parser(
        "status", help="last full/diff backup, WAL archive lag, last check, newest restorable point"
    )
    sub.add_parser("report", help="send a backup job's outcome to the log servers (run by the timers)")
    st.add_argument("--stanza", default="sagews")
    st.add_argument("--repo-path", default="/var/lib/pgbackrest", help="the repository (on the backup host)")
    st.add_argument("--config", help="pgBackRest's configuration file (default: its own default)")
    st.add_argument("--max-age-hours", type=float, default=30, help="a backup older than this is a problem")
    st.add_argument("--json", action="store_true", help="one JSON object (for monitoring)")
    args = ap.parse_args(argv)
    now = dt.datetime.now(dt.UTC)
    try:
        status = collect(args.stanza, Path(args.repo_path), args.config)
    except StatusError as exc:
        print(f"sagews backup status: {exc}", file=sys.stderr)
        return 2
    found = problems(status, now, dt.timedelta(hours=args.max_age_hours))
    if args.json:
        print(json.dumps({**status.to_json(now), "problems": found}, sort_keys=True))
    else:
        print(render(status, now, found))
    return 1 if found else 0
