"""What an operator cares about between the boxes: each internal port reachable only by the hosts
that talk to it, and a rolling upgrade of backends, log servers and workers under a steady load with
no failed client request and every acknowledged save stored."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BACKENDS, BASE, CA, HOSTS, WORKERS, name, once

from tests.system.load import Counts, run_load

ROOT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])

# (service port on a host, hosts that may connect, hosts that may not). A host's own address is not
# checked: traffic to it never leaves the host (it goes through lo).
REACHABILITY = [
    ("topo-app1", 8443, ["topo-lb1", "topo-lb2"], ["topo-app2", "topo-db1", "topo-backup"]),  # backend
    ("topo-app1", 6100, ["topo-app2"], ["topo-lb1", "topo-db1", "topo-backup"]),  # worker
    ("topo-app1", 6200, ["topo-app2", "topo-backup"], ["topo-lb1", "topo-lb2"]),  # log server
    ("topo-app1", 11211, ["topo-app2"], ["topo-lb1", "topo-db1", "topo-backup"]),  # memcached
    ("topo-db1", 5432, ["topo-app1", "topo-app2", "topo-db2"], ["topo-lb1", "topo-lb2"]),  # PostgreSQL
]


def reachable(src, dst: str, port: int) -> bool:
    out = src.run(f"nc -z -w 2 {HOSTS[dst]} {port}")
    return out.rc == 0


@pytest.mark.parametrize(("target", "port", "allowed", "refused"), REACHABILITY)
def test_internal_ports_are_open_only_to_their_clients(host, target, port, allowed, refused):
    here = name(host)
    if here not in allowed + refused:
        pytest.skip(f"{here} is not a source checked for {target}:{port}")
    assert reachable(host, target, port) == (here in allowed), f"{here} -> {target}:{port}"


def ansible_playbook(playbook: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": f"{os.environ['MOLECULE_EPHEMERAL_DIRECTORY']}/ansible.cfg",
        "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_NOCOLOR": "1",
    }
    return subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(ROOT / playbook)],
        env=env, capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip


async def upgrade_under_load(users: int) -> tuple[Counts, list[str], subprocess.CompletedProcess[str], float]:
    counts, stop = Counts(), asyncio.Event()
    load = asyncio.ensure_future(run_load(BASE, CA, users, stop, counts))
    await asyncio.sleep(5)  # the load is running before the first restart
    t0 = time.monotonic()
    proc = await asyncio.to_thread(ansible_playbook, "playbooks/rolling-upgrade.yml")
    took = time.monotonic() - t0
    await asyncio.sleep(3)
    stop.set()
    mismatches = await load
    return counts, mismatches, proc, took


SERVICES = [(h, "sagews-backend") for h in BACKENDS] + [(h, "sagews-worker") for h in WORKERS]


@pytest.mark.timeout(1200)  # the playbook restarts six services one at a time (printed: how long it took)
def test_rolling_upgrade_under_load_fails_no_request_and_loses_no_save(host):
    once(host)
    before = {s: main_pid(*s) for s in SERVICES}
    counts, mismatches, proc, took = asyncio.run(upgrade_under_load(users=4))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    after = {s: main_pid(*s) for s in SERVICES}
    restarted = [s for s in SERVICES if before[s] != after[s]]
    print(
        f"rolling upgrade of {len(restarted)} services under load took {took:.0f} s: {counts.requests} "
        f"requests, {counts.failed} failed, {counts.resent} re-sent after a 1012 close, "
        f"{counts.reconnects} reconnects, {len(counts.acked)} workspaces with acknowledged saves"
    )
    assert restarted == SERVICES, (before, after)
    # (an EBADF save refusal was seen here until uvloop's double close of pipe descriptors was worked
    # around: docs/reliability.md; no failure of any kind is tolerated)
    assert counts.failed == 0, counts.errors
    assert counts.requests > 50
    # every acknowledged save is stored: each workspace's newest stored version is its last acknowledged one
    assert counts.acked and mismatches == [], mismatches


def main_pid(container: str, unit: str) -> str:
    """The main PID of a sagews unit on a container (changes when the unit restarts)."""
    out = subprocess.run(
        ["docker", "exec", container, "systemctl", "show", "-p", "MainPID", "--value", unit],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    pid = out.stdout.strip()
    assert pid not in ("", "0"), f"{unit} is not running on {container}"
    return pid
