"""What an operator (and /metrics) needs to know about the backups, from pgBackRest and PostgreSQL.

Sources, all read-only:

* ``pgbackrest --stanza=S --output=json info``: the backups in the repository (type, start/stop
  time, database size, size in the repository) and the archived WAL range; works on the backup host
  and on every database host (they reach the repository over TLS).
* the repository's archive directory (on the backup host): when the newest WAL file arrived, i.e.
  the newest point a restore can reach;
* ``pg_stat_archiver`` (on the primary): how far WAL archiving lags behind the WAL being written;
* ``sagews-jobs.jsonl`` in the repository (written by the timers' units): the last outcome of each
  job (full, diff, check = pgbackrest check + verify).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

WAL_SEGMENT = 16 << 20  # bytes; PostgreSQL's default, which sagews uses


class StatusError(Exception):
    """pgBackRest or PostgreSQL could not be asked."""


@dataclass
class BackupSet:
    label: str
    type: str  # full, diff, incr
    started: dt.datetime
    finished: dt.datetime
    database_bytes: int  # size of the database it restores
    repository_bytes: int  # what this backup stores in the repository (compressed)


@dataclass
class Status:
    stanza: str
    ok: bool  # pgBackRest reports the stanza healthy and a full backup exists
    message: str
    backups: list[BackupSet] = field(default_factory=list)
    wal_min: str | None = None
    wal_max: str | None = None
    newest_restorable: dt.datetime | None = None  # when the newest archived WAL reached the repository
    archive_lag_bytes: int | None = None  # on the primary: WAL written but not archived yet
    archive_lag_seconds: float | None = None  # on the primary: age of the oldest WAL not archived
    archive_failures: int | None = None
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # job -> last outcome

    def last(self, kind: str) -> BackupSet | None:
        sets = [b for b in self.backups if b.type == kind]
        return sets[-1] if sets else None

    def to_json(self, now: dt.datetime) -> dict[str, Any]:
        out: dict[str, Any] = asdict(self)
        for b in out["backups"]:
            b["started"], b["finished"] = b["started"].isoformat(), b["finished"].isoformat()
        out["newest_restorable"] = self.newest_restorable.isoformat() if self.newest_restorable else None
        out["newest_restorable_age_seconds"] = (
            round((now - self.newest_restorable).total_seconds(), 1) if self.newest_restorable else None
        )
        for kind in ("full", "diff", "incr"):
            b = self.last(kind)
            out[f"last_{kind}"] = None if b is None else {
                "finished": b.finished.isoformat(),
                "age_seconds": round((now - b.finished).total_seconds(), 1),
                "database_bytes": b.database_bytes,
                "repository_bytes": b.repository_bytes,
            }  # fmt: skip
        return out


def _utc(seconds: int | float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def parse_info(stanza: str, info: list[dict[str, Any]]) -> Status:
    """``pgbackrest info --output=json`` (a list of stanzas) -> Status for ``stanza``."""
    entry = next((s for s in info if s.get("name") == stanza), None)
    if entry is None:
        return Status(stanza, False, f"stanza {stanza!r} not found in the repository")
    code = int(entry.get("status", {}).get("code", 99))
    message = str(entry.get("status", {}).get("message", "unknown"))
    backups = [
        BackupSet(
            label=b["label"],
            type=b["type"],
            started=_utc(b["timestamp"]["start"]),
            finished=_utc(b["timestamp"]["stop"]),
            database_bytes=int(b["info"]["size"]),
            repository_bytes=int(b["info"]["repository"]["delta"]),
        )
        for b in entry.get("backup", [])
    ]
    backups.sort(key=lambda b: b.finished)
    archives = [a for a in entry.get("archive", []) if a.get("max")]
    status = Status(stanza, code == 0 and any(b.type == "full" for b in backups), message, backups)
    if archives:
        status.wal_min = min(a["min"] for a in archives)
        status.wal_max = max(a["max"] for a in archives)
    return status


def segment_end_lsn(segment: str) -> int:
    """The LSN just past WAL segment file ``segment`` (24 hex digits: timeline, log, segment)."""
    log, seg = int(segment[8:16], 16), int(segment[16:24], 16)
    return (log << 32) + (seg + 1) * WAL_SEGMENT


def parse_lsn(lsn: str) -> int:
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def newest_archived(repo_path: Path, stanza: str) -> dt.datetime | None:
    """When the newest WAL file reached the repository (the archive directory on the backup host)."""
    root = repo_path / "archive" / stanza
    newest = 0.0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if len(name) >= 24 and name[:24].isalnum() and not name.endswith((".info", ".copy")):
                newest = max(newest, os.stat(os.path.join(dirpath, name)).st_mtime)
    return _utc(newest) if newest else None


def read_jobs(path: Path) -> dict[str, dict[str, Any]]:
    """The last outcome of each job from the timers' record (one JSON object per line)."""
    jobs: dict[str, dict[str, Any]] = {}
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return jobs
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a full disk: skip it, keep the others
        if isinstance(rec, dict) and "job" in rec:
            jobs[str(rec["job"])] = rec
    return jobs


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def run_info(stanza: str, config: str | None = None, timeout: float = 60) -> list[dict[str, Any]]:
    argv = [
        "pgbackrest",
        *([f"--config={config}"] if config else []),
        f"--stanza={stanza}",
        "--output=json",
        "info",
    ]
    argv = _as_postgres(argv)
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StatusError(f"pgbackrest info: {exc}") from exc
    if out.returncode != 0:
        raise StatusError(
            f"pgbackrest info failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}"
        )
    try:
        return list(json.loads(out.stdout))
    except ValueError as exc:
        raise StatusError(f"pgbackrest info: not JSON: {exc}") from exc


ARCHIVER_SQL = (
    "SELECT pg_is_in_recovery(),"
    " CASE WHEN pg_is_in_recovery() THEN '0/0' ELSE pg_current_wal_lsn()::text END,"
    " coalesce(nullif(last_archived_wal, ''), '-'), coalesce(extract(epoch FROM last_archived_time), 0),"
    " failed_count FROM pg_stat_archiver"
)


def archiver(timeout: float = 10) -> tuple[int, float, int] | None:
    """(bytes of WAL not archived yet, age in seconds of the oldest of them, failures) on a local
    primary (libpq's PGHOST/PGPORT apply); None without a local PostgreSQL, or on a replica."""
    argv = _as_postgres(["psql", "-X", "-A", "-t", "-F", " ", "-d", "postgres", "-c", ARCHIVER_SQL])
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    fields = out.stdout.split()
    if out.returncode != 0 or len(fields) != 5 or fields[0] != "f":
        return None
    current, last_wal, last_time, failed = parse_lsn(fields[1]), fields[2], float(fields[3]), int(fields[4])
    archived_to = segment_end_lsn(last_wal) if last_wal != "-" else 0
    lag = max(0, current - archived_to)
    now = dt.datetime.now(dt.UTC).timestamp()
    # The segment after the last archived one started when that one was archived, at the latest.
    return lag, (0.0 if lag == 0 or not last_time else max(0.0, now - last_time)), failed


def collect(stanza: str, repo_path: Path, config: str | None = None) -> Status:
    status = parse_info(stanza, run_info(stanza, config))
    if repo_path.is_dir():
        status.newest_restorable = newest_archived(repo_path, stanza)
        status.jobs = read_jobs(repo_path / "sagews-jobs.jsonl")
    arch = archiver()
    if arch is not None:
        status.archive_lag_bytes, status.archive_lag_seconds, status.archive_failures = arch
    return status
