"""``sagews backup status`` against a real pgBackRest 2.45 repository (encrypted, as the role
configures it) of a real PostgreSQL with WAL archiving: what an operator reads at 3 a.m."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sagews.backup import cli
from sagews.backup.status import collect, segment_end_lsn
from tests.fixtures.postgres import PostgresCluster, find_bindir

STANZA = "test"


def _pgbackrest(base: Path, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["pgbackrest", f"--config={config or base / 'pgbackrest.conf'}", f"--stanza={STANZA}", *args]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def repo() -> Iterator[tuple[PostgresCluster, Path]]:
    if find_bindir() is None or shutil.which("pgbackrest") is None:
        reason = "needs PostgreSQL 15 and pgbackrest (apt-get install postgresql-15 pgbackrest)"
        print(f"\nSKIP: {reason}", file=sys.stderr)
        pytest.skip(reason)
    cluster = PostgresCluster(find_bindir(), {"wal_level": "replica", "archive_mode": "on", "fsync": "off"})
    base = cluster.base
    conf = base / "pgbackrest.conf"
    cluster.settings["archive_command"] = f"'pgbackrest --config={conf} --stanza={STANZA} archive-push %p'"
    conf.write_text(
        f"[global]\nrepo1-path={base}/repo\nrepo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass=not-in-git\n"
        f"log-path={base}\nlock-path={base}\nlog-level-console=warn\nstart-fast=y\ncompress-type=zst\n"
        f"[{STANZA}]\npg1-path={cluster.data}\npg1-port={cluster.port}\npg1-socket-path={base}\n"
    )
    conf.chmod(0o644)
    try:
        cluster.init()
        cluster.start()
        cluster.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g")
        for step in (["stanza-create"], ["--type=full", "backup"]):
            out = _pgbackrest(base, *step)
            assert out.returncode == 0, out.stderr + out.stdout
        cluster.psql("INSERT INTO t SELECT g FROM generate_series(1, 10000) g")
        out = _pgbackrest(base, "--type=diff", "backup")
        assert out.returncode == 0, out.stderr + out.stdout
        yield cluster, base
    finally:
        cluster.destroy()


@pytest.fixture
def local_pg(repo: tuple[PostgresCluster, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    cluster, base = repo
    monkeypatch.setenv("PGHOST", str(base))  # libpq (psql) finds the cluster through these
    monkeypatch.setenv("PGPORT", str(cluster.port))


def test_status_reports_backups_archive_and_restorable_point(repo, local_pg) -> None:  # type: ignore[no-untyped-def]
    cluster, base = repo
    cluster.psql("SELECT pg_switch_wal()")
    deadline = time.monotonic() + 20
    while cluster.psql("SELECT last_archived_time IS NOT NULL FROM pg_stat_archiver").strip() != "t":
        assert time.monotonic() < deadline, "nothing archived"
        time.sleep(0.2)
    status = collect(STANZA, base / "repo", str(base / "pgbackrest.conf"))
    assert status.ok, status.message
    full, diff = status.last("full"), status.last("diff")
    assert full is not None and diff is not None
    assert full.database_bytes > 1 << 20 and 0 < diff.repository_bytes < full.repository_bytes
    assert status.wal_min and status.wal_max and status.wal_min <= status.wal_max
    assert status.newest_restorable is not None
    assert status.archive_failures == 0 and status.archive_lag_bytes is not None


def test_cli_json_is_the_monitoring_contract(repo, local_pg, capsys) -> None:  # type: ignore[no-untyped-def]
    _cluster, base = repo
    argv = [
        "status",
        "--stanza",
        STANZA,
        "--repo-path",
        str(base / "repo"),
        "--config",
        str(base / "pgbackrest.conf"),
    ]
    assert cli.main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["problems"] == [] and out["ok"] is True
    assert out["last_full"]["database_bytes"] > 0 and out["last_diff"]["age_seconds"] < 600
    assert out["newest_restorable_age_seconds"] < 600
    assert cli.main(argv) == 0
    assert "last full:" in capsys.readouterr().out


def test_a_failed_job_and_a_missing_stanza_are_problems(repo, local_pg, capsys) -> None:  # type: ignore[no-untyped-def]
    _cluster, base = repo
    jobs = base / "repo" / "sagews-jobs.jsonl"
    jobs.write_text('{"job":"check","finished":"2026-01-01T05:30:00Z","result":"exit-code"}\n')
    try:
        argv = [
            "status",
            "--stanza",
            STANZA,
            "--repo-path",
            str(base / "repo"),
            "--config",
            str(base / "pgbackrest.conf"),
        ]
        assert cli.main(argv) == 1
        assert "last check run failed" in capsys.readouterr().out
    finally:
        jobs.unlink()
    assert cli.main(["status", "--stanza", "nope", "--config", str(base / "pgbackrest.conf")]) == 1
    assert "missing stanza" in capsys.readouterr().out
    # pgBackRest cannot be asked at all (no configuration): exit 2, not a misleading "ok".
    assert cli.main(["status", "--stanza", STANZA, "--config", str(base / "missing.conf")]) == 2


def test_the_repository_is_unreadable_without_the_passphrase(repo) -> None:  # type: ignore[no-untyped-def]
    _cluster, base = repo
    plain = base / "nopass.conf"
    plain.write_text((base / "pgbackrest.conf").read_text().replace("repo1-cipher-pass=not-in-git\n", ""))
    plain.chmod(0o644)
    out = _pgbackrest(base, "info", config=plain)
    assert out.returncode != 0 or "error" in out.stdout.lower(), out.stdout
    info = next((base / "repo" / "backup" / STANZA).glob("*F/backup.manifest"))
    assert info.read_bytes()[:8] == b"Salted__"  # OpenSSL's header: the file is ciphertext


def test_segment_end_lsn() -> None:
    assert segment_end_lsn("000000010000000000000003") == 4 * (16 << 20)
    assert segment_end_lsn("0000000200000001000000FF") == (1 << 32) + 256 * (16 << 20)
