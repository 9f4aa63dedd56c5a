"""Shared by the postgresql scenario's tests: addresses, connections from the test host (the bridge
gateway, an allowed application client) and commands in the containers."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time

import psycopg2
import pytest

HOSTS = {"pg-1": "172.30.4.10", "pg-2": "172.30.4.11"}  # molecule.yml: the database hosts
WITNESS = ("pg-backup", "172.30.4.12")
EPH = os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]
CA = f"{EPH}/pki/ca/ca.crt"


def app_password() -> str:
    with open(f"{EPH}/state/postgresql-app.password") as f:
        return f.read().split()[0]


def multi_host_url(order: list[str] | None = None) -> str:
    """The URL the sagews services use: every database host, libpq picks the writable one."""
    hosts = "&".join(f"host={HOSTS[name]}:5432" for name in (order or list(HOSTS)))
    return (
        f"postgresql://sagews:{app_password()}@/sagews?{hosts}"
        f"&target_session_attrs=read-write&sslmode=verify-full&sslrootcert={CA}"
    )


def connect(address: str, **kw: object) -> psycopg2.extensions.connection:
    params: dict[str, object] = dict(
        host=address,
        dbname="sagews",
        user="sagews",
        password=app_password(),
        sslmode="verify-full",
        sslrootcert=CA,
        connect_timeout=3,
    )
    params.update(kw)
    conn = psycopg2.connect(**params)
    conn.autocommit = True
    return conn


def query(address: str, sql: str, args: tuple | None = None) -> list[tuple] | None:
    with contextlib.closing(connect(address)) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else None


def role_of(address: str) -> str:
    """primary, replica, or down (as a client sees it)."""
    try:
        return "replica" if query(address, "SELECT pg_is_in_recovery()")[0][0] else "primary"
    except psycopg2.OperationalError:
        return "down"


def primary() -> str:
    """The name of the database host that accepts writes now (exactly one)."""
    roles = {name: role_of(addr) for name, addr in HOSTS.items()}
    writable = [name for name, r in roles.items() if r == "primary"]
    assert len(writable) == 1, roles
    return writable[0]


def sh(container: str, command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """A shell command as root in one of this scenario's containers."""
    out = subprocess.run(
        ["docker", "exec", container, "bash", "-c", command],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert out.returncode == 0, f"{container}: {command}\n{out.stdout}\n{out.stderr}"
    return out


def wait_for(what: str, predicate, timeout: float, interval: float = 0.5):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def cluster_members(container: str | None = None) -> dict[str, dict]:
    """patronictl's view, as the operator sees it: member -> {Role, State, TL, Lag in MB, ...}.
    Asked on ``container``, or on the first database host that answers."""
    for name in [container] if container else list(HOSTS):
        out = sh(name, "patronictl list -f json", check=container is not None)
        if out.returncode == 0:
            return {m["Member"]: m for m in json.loads(out.stdout)}
    pytest.fail("patronictl answers on no database host")


def healthy() -> bool:
    """A leader streaming to a synchronous standby (seen on the leader), both on one timeline."""
    members = cluster_members()
    leaders = [name for name, m in members.items() if m["Role"] == "Leader"]
    if len(leaders) != 1 or len(members) != len(HOSTS) or len({m.get("TL") for m in members.values()}) != 1:
        return False
    standby = next(name for name in members if name != leaders[0])
    if members[standby]["Role"] != "Sync Standby":
        return False
    lag = sh(leaders[0], "sagews-pg-lag", check=False).stdout
    return f"replica={standby.replace('-', '_')} state=streaming sync=sync" in lag


def playbook(name: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run one of the repository's playbooks against this scenario's inventory, as an operator would."""
    path = f"{os.environ['MOLECULE_PROJECT_DIRECTORY']}/playbooks/{name}"
    env = dict(os.environ, ANSIBLE_CONFIG=f"{EPH}/ansible.cfg")
    argv = ["ansible-playbook", "-i", f"{EPH}/inventory", path, *extra]
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=1800)
    if check:
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    return out
