"""A backup that fails is seen where an operator looks: the log server stores the failed job's
record (sent from the backup host, over mutual TLS), and every backend's /metrics says so, until the
job succeeds again. The failure is a real one: the repository host cannot reach the database hosts'
pgBackRest TLS servers."""

from __future__ import annotations

import time

from conftest import BACKENDS, node, once, query, wait_for

ARCHIVE = "/var/lib/pgbackrest/archive"
CHECK = "sagews-pgbackrest-check.service"


def backup_metrics(backend: str) -> dict[str, float]:
    out = node(backend).check_output(
        "curl -sf --cacert /etc/ssl/sagews/ca.crt --resolve %s:8443:127.0.0.1 https://%s:8443/metrics",
        backend, backend,
    )  # fmt: skip
    return {
        k: float(v)
        for k, v in (ln.rsplit(" ", 1) for ln in out.splitlines() if ln.startswith("sagews_backup_"))
    }


def check_failed(value: int):
    def cond():
        return all(
            backup_metrics(b).get('sagews_backup_last_run_failed{job="check"}') == value for b in BACKENDS
        )

    return cond


def test_a_failed_backup_check_reaches_the_log_and_every_backends_metrics(host):
    once(host)
    backup = node("topo-backup")
    mode = backup.check_output(f"stat -c %a {ARCHIVE}")
    backup.check_output(f"chmod 000 {ARCHIVE}")
    try:
        t0 = time.monotonic()
        failed = backup.run(f"systemctl start {CHECK}")
        took = time.monotonic() - t0
        print(f"\nbackup check with the WAL archive unreadable: rc {failed.rc} after {took:.1f} s")
        assert failed.rc != 0, "pgbackrest check passed although the archive is unreadable"
        rows = wait_for(
            lambda: query(
                "SELECT level, message, host FROM log_records WHERE service = 'backup' "
                "AND extra->>'job' = 'check' ORDER BY id DESC LIMIT 1"
            ),
            timeout=60, what="the failed check's record in the log server's table",
        )  # fmt: skip
        level, message, sender = rows[0]
        assert (level, sender) == (40, "topo-backup") and "FAILED" in message, rows
        t1 = time.monotonic()
        wait_for(
            check_failed(1), timeout=90, what="sagews_backup_last_run_failed{job=check} 1 on every backend"
        )
        print(f"the failure in every backend's /metrics {time.monotonic() - t1:.1f} s after it was stored")
    finally:
        backup.check_output(f"chmod {mode} {ARCHIVE}")
    assert backup.run(f"systemctl start {CHECK}").rc == 0, backup.run(f"journalctl -u {CHECK} -n 30").stdout
    wait_for(check_failed(0), timeout=90, what="the check's success in every backend's /metrics")
    m = backup_metrics(BACKENDS[0])
    assert m['sagews_backup_last_success_timestamp_seconds{job="check"}'] > time.time() - 600
    assert 'sagews_backup_last_run_failed{job="full"}' in m, "the converge's first full backup was reported"
