"""A backup job's outcome reaches /metrics: `sagews backup report` (what the backup host's timer
units run) -> a real log server over mutual TLS -> PostgreSQL -> the backend's /metrics."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from sagews.db import make_engine
from sagews.db.models import LogRecord
from sagews.devpki import DevCA
from tests.backend.conftest import Backend
from tests.logserver.conftest import ROOT, LogServerProc


def report(cfg: Path, job: str, result: str, *extra: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "sagews.cli", "backup", "report", job, result, "--config", str(cfg), *extra],
        capture_output=True, text=True, timeout=60, check=True, cwd=ROOT,
    )  # fmt: skip
    return out.stdout


def backup_lines(text: str) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in (ln.rsplit(" ", 1) for ln in text.splitlines() if ln.startswith("sagews_backup_"))
    }


async def test_a_failed_backup_check_shows_in_the_log_and_in_metrics(
    backend: Backend, pg_url: str, pki: DevCA, tmp_path: Path
) -> None:
    server = LogServerProc(tmp_path / "ls", pki, pki.issue("logserver", client=False), pg_url).start()
    try:
        client = pki.issue("backup", server=False)
        cfg = tmp_path / "backup.toml"
        cfg.write_text(
            "[logging]\n"
            f'servers = ["127.0.0.1:{server.port}"]\n'
            f'cert = "{client.cert}"\nkey = "{client.key}"\nca = "{pki.ca_cert_path}"\n'
            f'spool_dir = "{tmp_path / "spool"}"\n'
        )
        backend.app.backups.ttl = 0  # no cache in the test: every scrape reads log_records
        user = await backend.new_user()
        _, before = await user.req("GET", "/metrics")
        assert backup_lines(before.decode()) == {}, "no backup record yet: no backup gauges"

        report(cfg, "full", "success", "--exit-code", "exited", "--exit-status", "0")
        printed = report(cfg, "check", "exit-code", "--exit-code", "exited", "--exit-status", "82")
        assert "FAILED" in printed and "no log server acknowledged" not in printed

        engine = make_engine(pg_url)
        with engine.connect() as c:
            rows = c.execute(
                select(LogRecord.service, LogRecord.level, LogRecord.message, LogRecord.extra)
                .where(LogRecord.logger == "sagews.backup").order_by(LogRecord.id)
            ).all()  # fmt: skip
        engine.dispose()
        assert [(r.service, r.level, r.extra["job"], r.extra["result"]) for r in rows] == [
            ("backup", 20, "full", "success"),
            ("backup", 40, "check", "exit-code"),
        ]
        assert "journalctl -u sagews-pgbackrest-check" in rows[1].message  # where to look next

        _, body = await user.req("GET", "/metrics")
        m = backup_lines(body.decode())
        assert m['sagews_backup_last_run_failed{job="check"}'] == 1
        assert m['sagews_backup_last_run_failed{job="full"}'] == 0
        assert 'sagews_backup_last_success_timestamp_seconds{job="check"}' not in m  # never succeeded
        full_ok = m['sagews_backup_last_success_timestamp_seconds{job="full"}']
        assert abs(full_ok - m['sagews_backup_last_run_timestamp_seconds{job="full"}']) < 1

        await asyncio.sleep(1.1)  # a later run of the same job, a later timestamp
        report(cfg, "check", "success")
        _, body = await user.req("GET", "/metrics")
        m = backup_lines(body.decode())
        assert m['sagews_backup_last_run_failed{job="check"}'] == 0
        assert m['sagews_backup_last_success_timestamp_seconds{job="check"}'] > full_ok
    finally:
        server.kill()


def test_report_refuses_a_job_it_does_not_know(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sagews.cli", "backup", "report", "nightly", "success"],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 2 and "invalid choice: 'nightly'" in out.stderr
