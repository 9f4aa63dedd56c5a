"""``sagews backup report JOB RESULT``: one backup job's outcome, sent to the log servers.

Run by the timers' units on the backup host (``ExecStopPost``, roles/pgbackrest): the outcome of a
full, diff or check run becomes a Python logging record of service ``backup``, logger
``sagews.backup`` (INFO on success, ERROR otherwise), stored by the log server in ``log_records``.
The backends read the newest record of each job from there for ``/metrics``
(sagews/backend/backups.py): a failed backup shows where the operator already looks. When no log
server answers, the record waits in the client's spool and goes with the next run.
"""

from __future__ import annotations

import argparse
import logging
import re

from sagews.logserver.client import LogServerHandler
from sagews.logserver.config import load_client

SERVICE = "backup"  # log_records.service of these records
LOGGER = "sagews.backup"  # log_records.logger
JOBS = ("full", "diff", "incr", "check")
_WORD = re.compile(r"[A-Za-z0-9_.-]{0,64}")


def record(
    job: str, result: str, stanza: str, exit_code: str, exit_status: str
) -> tuple[int, str, dict[str, str]]:
    """Level, message and ``extra`` of the record for one run (systemd's $SERVICE_RESULT etc.)."""
    extra = {
        "job": job,
        "result": result,
        "stanza": stanza,
        "exit_code": exit_code,
        "exit_status": exit_status,
    }
    if result == "success":
        return logging.INFO, f"pgBackRest {job} of stanza {stanza}: success", extra
    msg = (
        f"pgBackRest {job} of stanza {stanza} FAILED ({result}, {exit_code} {exit_status}): "
        f"journalctl -u sagews-pgbackrest-{job} on the backup host"
    )
    return logging.ERROR, msg, extra


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="sagews backup report", description=__doc__.splitlines()[0])
    ap.add_argument("job", choices=JOBS)
    ap.add_argument("result", help="systemd's $SERVICE_RESULT: success, exit-code, signal, timeout, ...")
    ap.add_argument("--exit-code", default="", help="systemd's $EXIT_CODE (exited, killed, ...)")
    ap.add_argument("--exit-status", default="", help="systemd's $EXIT_STATUS")
    ap.add_argument("--stanza", default="sagews")
    ap.add_argument(
        "--config", default="/etc/pgbackrest/sagews-report.toml", help="its [logging] table: the log servers"
    )
    ap.add_argument("--timeout", type=float, default=20, help="seconds to wait for the acknowledgement")
    args = ap.parse_args(argv)
    for name in ("result", "exit_code", "exit_status", "stanza"):
        if not _WORD.fullmatch(getattr(args, name)):
            ap.error(f"--{name.replace('_', '-')} must be a word of at most 64 letters, digits, _ . -")
    level, msg, extra = record(args.job, args.result, args.stanza, args.exit_code, args.exit_status)
    handler = LogServerHandler(load_client(args.config), SERVICE)
    log = logging.getLogger(LOGGER)
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        log.log(level, msg, extra={"sagews_extra": extra})
        delivered = handler.flush(args.timeout)
    finally:
        handler.close()
    if not delivered:
        print(f"sagews backup report: no log server acknowledged within {args.timeout:.0f} s (spooled)")
    print(msg)
    return 0
