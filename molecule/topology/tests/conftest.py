"""Shared by the topology scenario's tests: the hosts, the VIP, the CA, and a few helpers.

The scenario's containers are the seed's whole diagram (molecule.yml); these tests drive it from the
test host (the bridge gateway) as browsers and operators would.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import psycopg2
import pytest
import testinfra

sys.path.insert(0, os.environ["MOLECULE_PROJECT_DIRECTORY"])

NET = "172.30.9"
VIP = f"{NET}.100"
BASE = f"https://{VIP}"
EPH = os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]
CA = f"{EPH}/pki/ca/ca.crt"
HOSTS = {
    "topo-lb1": f"{NET}.10", "topo-lb2": f"{NET}.11",
    "topo-app1": f"{NET}.21", "topo-app2": f"{NET}.22",
    "topo-db1": f"{NET}.41", "topo-db2": f"{NET}.42",
    "topo-backup": f"{NET}.81",
}  # fmt: skip
LBS = ("topo-lb1", "topo-lb2")
BACKENDS = ("topo-app1", "topo-app2")
WORKERS = ("topo-app1", "topo-app2")
LOGSERVERS = ("topo-app1", "topo-app2")


def name(host) -> str:
    return host.backend.get_hostname()


def once(host) -> None:
    """Checks made from the test host run once, not once per container."""
    if name(host) != "topo-lb1":
        pytest.skip("checked once from the test host (as topo-lb1's parameter)")


def node(container: str):
    return testinfra.get_host(f"docker://{container}")


def db():
    """A connection to the database as the application role, over verified TLS, to the host that
    accepts writes (the same multi-host choice the services make)."""
    with open(f"{EPH}/state/postgresql-app.password") as f:
        password = f.read().split()[0]
    return psycopg2.connect(
        host=f"{HOSTS['topo-db1']},{HOSTS['topo-db2']}", dbname="sagews", user="sagews", password=password,
        connect_timeout=5, sslmode="verify-full", sslrootcert=CA, target_session_attrs="read-write",
    )  # fmt: skip


def query(sql: str, args: tuple = ()) -> list[tuple]:
    with contextlib.closing(db()) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else []


def wait_for(cond, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.5)
