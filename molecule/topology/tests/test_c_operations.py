"""What an operator cares about between the boxes: each internal port reachable only by the hosts
that talk to it, and a rolling upgrade of backends, log servers and workers under a steady load with
no failed client request and every acknowledged save stored."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BACKENDS, BASE, CA, HOSTS, WORKERS, name, once

from tests.system.load import Counts, run_load

ROOT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])

# (service port on a host, hosts that may connect, hosts that may not)
REACHABILITY = [
    ("topo-be1", 8443, ["topo-lb1", "topo-lb2", "topo-static"], ["topo-wk1", "topo-cache", "topo-log1"]),
    ("topo-wk1", 6100, ["topo-be1", "topo-be2"], ["topo-lb1", "topo-static", "topo-log1"]),
    ("topo-log1", 6200, ["topo-be1", "topo-wk2", "topo-log2"], ["topo-lb1", "topo-static"]),
    ("topo-cache", 11211, ["topo-be2"], ["topo-wk1", "topo-lb1", "topo-log1"]),
    ("topo-db1", 5432, ["topo-be1", "topo-log2", "topo-db2"], ["topo-wk1", "topo-lb1", "topo-static"]),
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


def test_rolling_upgrade_under_load_fails_no_request_and_loses_no_save(host):
    once(host)
    before = {h: json.loads(service_pid(h)) for h in BACKENDS + WORKERS}
    counts, mismatches, proc, took = asyncio.run(upgrade_under_load(users=4))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    after = {h: json.loads(service_pid(h)) for h in BACKENDS + WORKERS}
    restarted = [h for h in before if before[h]["pid"] != after[h]["pid"]]
    print(
        f"rolling upgrade of {len(restarted)} services under load took {took:.0f} s: {counts.requests} "
        f"requests, {counts.failed} failed, {counts.resent} re-sent after a 1012 close, "
        f"{counts.reconnects} reconnects, {len(counts.acked)} workspaces with acknowledged saves"
    )
    assert sorted(restarted) == sorted(BACKENDS + WORKERS), (before, after)
    assert counts.failed == 0, counts.errors
    assert counts.requests > 50
    # every acknowledged save is stored: each workspace's newest stored version is its last acknowledged one
    assert counts.acked and mismatches == [], mismatches


def service_pid(container: str) -> str:
    """{"unit", "pid"} of the sagews service on a container."""
    unit = "sagews-backend" if container in BACKENDS else "sagews-worker"
    out = subprocess.run(
        ["docker", "exec", container, "systemctl", "show", "-p", "MainPID", "--value", unit],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.dumps({"unit": unit, "pid": out.stdout.strip()})
