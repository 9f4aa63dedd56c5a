"""The backup drill (issue 15), after the failover drills: the primary has moved, so the backups and
WAL archiving below also show pgBackRest following Patroni.

Accounts, workspaces and their bundle history are written through the real schema (sagews.db and
the backend's functions); a full backup; every data directory destroyed; restore.yml; a checksum of
every table identical. Then a destructive DELETE, and a point-in-time restore to just before it
brings the rows back. The repository on pg-backup is ciphertext. Figures: drill-backup*.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid

import pytest
from conftest import HOSTS, WITNESS, healthy, multi_host_url, playbook, primary, query, sh, wait_for
from sqlalchemy.orm import Session

from sagews.backend.accounts import create_account
from sagews.backend.workspaces import db_create, db_store_bundle
from sagews.db import Database, upgrade

EPH = os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]
BACKUP = WITNESS[0]  # pg-backup keeps the repository
WORKSPACES, BUNDLES, BUNDLE_BYTES = 1000, 3, 4096  # issue 15: 1,000 workspaces with history
PGBACKREST = "runuser -u postgres -- pgbackrest"


def record(name: str, facts: dict) -> None:
    with open("/proc/pressure/cpu") as f:  # the test host's CPU pressure, to read the figures by
        facts["cpu_pressure_avg10"] = float(f.readline().split()[1].split("=")[1])
    sys.__stderr__.write(f"\ndrill {name}: {json.dumps(facts)}\n")
    with open(f"{EPH}/drill-{name}.json", "w") as f:
        json.dump(facts, f, indent=1)


def checksums() -> dict[str, tuple[int, str]]:
    """Rows and an order-independent md5 of every table of the sagews schema, on the primary."""
    address = HOSTS[primary()]
    tables = [r[0] for r in query(address, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    digest = (
        "SELECT count(*), md5(coalesce(string_agg(md5(x::text), '' ORDER BY md5(x::text)), '')) FROM {} x"
    )
    return {t: tuple(query(address, digest.format(f'"{t}"'))[0]) for t in sorted(tables)}


@pytest.fixture(scope="module")
def history() -> list[str]:
    """1,000 workspaces of 100 accounts, three bundles each (incompressible, like git packs)."""
    upgrade(multi_host_url())
    db = Database(multi_host_url())

    def batch(s: Session, n: int) -> list[str]:
        ids = []
        for a in range(10):
            user = create_account(s, f"backup-{uuid.uuid4().hex[:10]}", None)
            for _ in range(n // 10):
                ws = db_create(s, user.id, f"ws {a}")["id"]
                for seq in range(BUNDLES):
                    db_store_bundle(s, ws, os.urandom(BUNDLE_BYTES), seq == 0, uuid.uuid4().hex)
                ids.append(ws)
        return ids

    async def write() -> list[str]:
        ids: list[str] = []
        for _ in range(WORKSPACES // 100):
            ids += await db.run(batch, 100)
        return ids

    t0 = time.monotonic()
    try:
        ids = asyncio.run(write())
    finally:
        db.close()
    record(
        "backup-data",
        {
            "workspaces": len(ids),
            "bundles": len(ids) * BUNDLES,
            "write_seconds": round(time.monotonic() - t0, 1),
        },
    )
    return ids


def full_backup() -> float:
    t0 = time.monotonic()
    sh(BACKUP, "systemctl start sagews-pgbackrest-full.service", timeout=900)
    return round(time.monotonic() - t0, 1)


def test_backup_destroy_restore_gives_identical_tables(history):
    wait_for("a healthy cluster", healthy, timeout=120)
    before = checksums()
    assert before["workspaces"][0] >= len(history)
    assert before["workspace_bundles"][0] >= len(history) * BUNDLES
    seconds = full_backup()
    info = json.loads(sh(BACKUP, f"{PGBACKREST} --stanza=sagews --output=json info").stdout)
    last = info[0]["backup"][-1]
    jobs = sh(BACKUP, "tail -1 /var/lib/pgbackrest/sagews-jobs.jsonl").stdout
    assert '"job":"full"' in jobs and '"result":"success"' in jobs, jobs
    # Destroy every copy of the database: PostgreSQL stopped, data directories gone.
    for name in HOSTS:
        sh(name, "systemctl stop patroni && rm -rf /var/lib/postgresql/15/main")
    t0 = time.monotonic()
    playbook("restore.yml")
    restore_seconds = round(time.monotonic() - t0, 1)
    wait_for("the rebuilt replica to stream", healthy, timeout=300, interval=1)
    record(
        "backup-restore",
        {
            "backup_seconds": seconds,
            "database_bytes": last["info"]["size"],
            "repository_bytes": last["info"]["repository"]["delta"],
            "restore_playbook_seconds": restore_seconds,
        },
    )
    assert checksums() == before


def test_restore_refuses_to_overwrite_a_running_primary():
    out = playbook("restore.yml", check=False)
    assert out.returncode != 0 and "runs the primary" in out.stdout, out.stdout[-2000:]
    assert primary() in HOSTS  # nothing was stopped


def backup_idle() -> bool:
    out = sh(BACKUP, "systemctl is-active sagews-pgbackrest-full.service", check=False).stdout.strip()
    return out in ("inactive", "failed")


def test_point_in_time_restore_brings_deleted_rows_back(history):
    wait_for("a healthy cluster", healthy, timeout=120)
    wait_for("the full backup restore.yml started to end", backup_idle, timeout=600, interval=2)
    before = checksums()
    address = HOSTS[primary()]
    target = query(address, "SELECT now()::text")[0][0]
    time.sleep(1.5)
    doomed = tuple(history[:100])
    query(address, "DELETE FROM workspaces WHERE id IN %s", (doomed,))  # cascades to their bundles
    assert checksums()["workspace_bundles"][0] == before["workspace_bundles"][0] - 100 * BUNDLES
    # The DELETE's WAL reaches the repository (archive_timeout would do it within a minute).
    # pg_switch_wal() is for superusers (the app role may not): as postgres on the primary's host.
    switch = "runuser -u postgres -- psql -X -A -t -c 'SELECT pg_walfile_name(pg_switch_wal())'"
    segment = sh(primary(), switch).stdout.strip()
    archived = "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver"
    done = lambda: query(address, archived)[0][0] >= segment  # noqa: E731
    wait_for("the WAL of the DELETE to be archived", done, timeout=60)
    t0 = time.monotonic()
    playbook(
        "restore.yml",
        "-e",
        "restore_type=time",
        "-e",
        f"restore_target='{target}'",
        "-e",
        "restore_overwrite_running_primary=true",
    )
    seconds = round(time.monotonic() - t0, 1)
    wait_for("the rebuilt replica to stream", healthy, timeout=300, interval=1)
    record("backup-pitr", {"target": target, "restore_playbook_seconds": seconds})
    assert checksums() == before


def test_the_repository_is_ciphertext_without_the_passphrase():
    # the newest finished full backup (one the timers or restore.yml started may still be running: its
    # directory has no backup.manifest until it ends)
    finished = "ls -1 /var/lib/pgbackrest/backup/sagews/*F/backup.manifest | tail -1"
    manifest = sh(BACKUP, finished).stdout.strip()
    head = sh(BACKUP, f"head -c 8 {manifest}").stdout
    assert head == "Salted__", head  # OpenSSL's header: encrypted
    sh(BACKUP, "grep -v cipher-pass /etc/pgbackrest/pgbackrest.conf > /tmp/nopass.conf")
    sh(BACKUP, "chmod 644 /tmp/nopass.conf")
    out = sh(BACKUP, f"{PGBACKREST} --config=/tmp/nopass.conf --stanza=sagews info", check=False)
    assert out.returncode != 0 or "error" in out.stdout.lower(), out.stdout


def test_wal_archive_lag_under_steady_writes(history):
    """A client saves steadily for 20 s; sample how far WAL archiving lags on the primary."""
    address = HOSTS[primary()]
    db = Database(multi_host_url())
    samples: list[tuple[int, float]] = []

    async def run() -> int:
        stop = time.monotonic() + 20
        n = 0
        next_sample = 0.0
        while time.monotonic() < stop:
            await db.run(db_store_bundle, history[-1], os.urandom(BUNDLE_BYTES), False, uuid.uuid4().hex)
            n += 1
            if time.monotonic() >= next_sample:
                row = query(
                    address,
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint,"
                    " last_archived_wal, extract(epoch FROM now() - last_archived_time)"
                    " FROM pg_stat_archiver",
                )[0]
                end = (int(row[1][8:16], 16) << 32) + (int(row[1][16:24], 16) + 1) * (16 << 20)
                samples.append((max(0, int(row[0]) - end), float(row[2])))
                next_sample = time.monotonic() + 1
        return n

    try:
        saves = asyncio.run(run())
    finally:
        db.close()
    lags = sorted(b for b, _ in samples)
    facts = {
        "saves": saves,
        "seconds": 20,
        "samples": len(samples),
        "lag_bytes_p50": lags[len(lags) // 2],
        "lag_bytes_max": lags[-1],
        "since_last_archived_max_s": round(max(s for _, s in samples), 1),
    }
    record("backup-archive-lag", facts)
    assert lags[-1] <= 2 * (16 << 20), "more than two WAL segments waiting to be archived"
