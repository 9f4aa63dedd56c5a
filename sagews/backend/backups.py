"""The backup jobs' last outcomes for ``/metrics``: read from the log records the backup host sends.

The backup host runs no sagews service; each pgBackRest job's unit reports its outcome to the log
servers (``sagews backup report``, sagews/backup/report.py), which store it in ``log_records``. A
backend reads the newest record of each job from there (cached ``ttl`` seconds: every backend is
scraped, the query stays rare) and exports it, so a failed or missing backup alerts where every
other sagews metric does.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from sagews.backup.report import JOBS, LOGGER, SERVICE
from sagews.db import Database
from sagews.db.models import LogRecord

log = logging.getLogger(__name__)
RECENT = 500  # backup records looked at: ~4 a day, so months of history


@dataclass
class Outcome:
    job: str
    ts: float  # when the run ended (the backup host's clock), seconds since the epoch
    ok: bool
    last_success: float | None


def latest_outcomes(s: Session) -> list[Outcome]:
    """The newest outcome of each job, with the time of its newest success (blocking: db.run)."""
    rows = s.execute(
        select(LogRecord.ts, LogRecord.level, LogRecord.extra)
        .where(LogRecord.service == SERVICE, LogRecord.logger == LOGGER)
        .order_by(LogRecord.ts.desc())
        .limit(RECENT)
    ).all()
    newest: dict[str, Outcome] = {}
    for ts, level, extra in rows:
        job = extra.get("job") if isinstance(extra, dict) else None
        if job not in JOBS:
            continue
        when = ts.timestamp()
        ok = level < logging.WARNING and extra.get("result") == "success"
        if job not in newest:
            newest[job] = Outcome(job, when, ok, when if ok else None)
        elif ok and newest[job].last_success is None:
            newest[job].last_success = when
    return [newest[j] for j in JOBS if j in newest]


class BackupOutcomes:
    def __init__(self, db: Database, ttl: float = 30.0) -> None:
        self.db = db
        self.ttl = ttl
        self._cached: list[Outcome] = []
        self._at = -1e9

    async def get(self) -> list[Outcome]:
        if time.monotonic() - self._at >= self.ttl:
            try:
                self._cached = await self.db.run(latest_outcomes)
            except Exception:
                log.exception("could not read the backup outcomes from log_records (kept the last ones)")
            self._at = time.monotonic()
        return self._cached

    @staticmethod
    def render(outcomes: list[Outcome]) -> str:
        lines = [
            "# HELP sagews_backup_last_run_timestamp_seconds When each backup job's newest run ended.",
            "# TYPE sagews_backup_last_run_timestamp_seconds gauge",
            *(f'sagews_backup_last_run_timestamp_seconds{{job="{o.job}"}} {o.ts:.0f}' for o in outcomes),
            "# HELP sagews_backup_last_run_failed 1 if the newest run of the job failed.",
            "# TYPE sagews_backup_last_run_failed gauge",
            *(f'sagews_backup_last_run_failed{{job="{o.job}"}} {0 if o.ok else 1}' for o in outcomes),
            "# HELP sagews_backup_last_success_timestamp_seconds When the job last succeeded (among the "
            f"newest {RECENT} backup records).",
            "# TYPE sagews_backup_last_success_timestamp_seconds gauge",
            *(
                f'sagews_backup_last_success_timestamp_seconds{{job="{o.job}"}} {o.last_success:.0f}'
                for o in outcomes
                if o.last_success is not None
            ),
        ]
        return "\n".join(lines) + "\n"
