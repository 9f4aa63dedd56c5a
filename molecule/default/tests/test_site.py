"""The all-in-one appliance after site.yml (what `make up` deploys), checked as its users would.

A browser's view: HTTPS through HAProxy with the appliance CA; sign up, create a workspace, run Sage and
Python, save, and find the work again after the worker restarted. An operator's view: every unit up and
restarted by systemd after kill -9, the services' log records in the database (through the log server),
the internal ports closed to other hosts, and the services running with the database settings the last
deploy wrote (side_effect.yml changed them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import sys
import time

import psycopg2
import pytest
import requests

sys.path.insert(0, os.environ["MOLECULE_PROJECT_DIRECTORY"])

from tests.system.journey import (
    SAGE_FACTOR,
    SAGE_FACTOR_RESULT,
    connect,
    new_user,
    new_workspace,
    run,
)

ADDRESS = "172.30.10.10"  # molecule.yml
BASE = f"https://{ADDRESS}"
EPH = os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]
CA = f"{EPH}/pki/ca/ca.crt"
UNITS = ("sagews-backend", "sagews-worker", "sagews-logserver")


def test_every_service_is_running_and_enabled(host):
    for unit in ("haproxy", "nginx", "patroni", "etcd", "memcached", "nftables", *UNITS):
        svc = host.service(unit)
        assert svc.is_running and svc.is_enabled, unit


def test_https_is_served_with_the_appliance_certificate():
    ctx = ssl.create_default_context(cafile=CA)  # verifies the chain and that the address is in the SANs
    raw = socket.create_connection((ADDRESS, 443), timeout=5)
    with ctx.wrap_socket(raw, server_hostname=ADDRESS) as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_the_app_shell_and_static_assets_come_from_nginx():
    r = requests.get(f"{BASE}/", verify=CA, timeout=5)
    assert r.status_code == 200 and "<html" in r.text.lower()
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert "max-age" in r.headers["Strict-Transport-Security"]
    r = requests.get(f"{BASE}/static/js/protocol.js", verify=CA, timeout=5)
    assert r.status_code == 200 and "SockJS" in r.text
    r = requests.get(f"http://{ADDRESS}/", allow_redirects=False, timeout=5)
    assert r.status_code == 301 and r.headers["Location"].startswith("https://")


async def _journey() -> dict[str, str]:
    u = await new_user(BASE, CA, "aio")
    ws = await new_workspace(u)
    c = await connect(u)
    try:
        opened = await c.request({"type": "open", "workspace": ws})
        assert opened["type"] == "opened", opened
        sage, done = await run(c, ws, SAGE_FACTOR, "sage")
        assert done.get("status") == "ok", done
        python, done = await run(c, ws, "1+1", "python")
        assert done.get("status") == "ok", done
        w = await c.request({"type": "write", "session": ws, "path": "notes.txt", "text": "kept\n"})
        assert w["type"] == "write", w
        saved = await c.request({"type": "save", "session": ws, "message": "journey"})
        assert saved["type"] == "saved", saved
    finally:
        await c.close()
    return {"user": u.name, "ws": ws, "sage": sage, "python": python}  # type: ignore[attr-defined]


async def _reopen(name: str, ws: str) -> tuple[dict, dict]:
    from tests.backend.helpers import HttpUser

    u = HttpUser(BASE, ca=CA)
    code, body = await u.login(name)
    assert code == 200, body
    c = await connect(u, "xhr_streaming")
    try:
        await c.request({"type": "open", "workspace": ws})
        read = await c.request({"type": "read", "session": ws, "path": "notes.txt"})
        history = await c.request({"type": "history", "session": ws})
        out, done = await run(c, ws, "2+3", "python")
        assert done.get("status") == "ok" and out.strip() == "5", done
    finally:
        await c.close()
    return read, history


def test_a_user_signs_up_runs_sage_and_python_and_finds_the_work_after_a_worker_restart(host):
    j = asyncio.run(_journey())
    assert SAGE_FACTOR_RESULT in j["sage"]
    assert j["python"].strip() == "2"
    assert host.run("systemctl restart sagews-worker").rc == 0
    read, history = asyncio.run(_reopen(j["user"], j["ws"]))
    assert read.get("text") == "kept\n", read
    assert any(c["message"] == "journey" for c in history["commits"]), history


def _pg():
    with open(f"{EPH}/state/postgresql-app.password") as f:
        password = f.read().split()[0]
    return psycopg2.connect(
        host=ADDRESS, dbname="sagews", user="sagews", password=password, connect_timeout=5,
        sslmode="verify-full", sslrootcert=CA,
    )  # fmt: skip


def test_every_service_logs_into_the_database_through_the_log_server():
    deadline = time.monotonic() + 60
    while True:
        with contextlib.closing(_pg()) as conn, conn.cursor() as cur:
            cur.execute("SELECT DISTINCT service FROM log_records")
            services = {row[0] for row in cur.fetchall()}
        if {"backend", "worker", "logserver"} <= services or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert {"backend", "worker", "logserver"} <= services, services


def test_postgresql_refuses_connections_without_tls():
    with open(f"{EPH}/state/postgresql-app.password") as f:
        password = f.read().split()[0]
    with pytest.raises(psycopg2.OperationalError, match=r"no encryption|SSL off"):
        psycopg2.connect(
            host=ADDRESS,
            dbname="sagews",
            user="sagews",
            password=password,
            sslmode="disable",
            connect_timeout=5,
        ).close()


@pytest.mark.parametrize("port", [8443, 6100, 6200, 11211])
def test_internal_ports_are_closed_to_other_hosts(port):
    # backend, worker, log server, memcached: the test host is none of their clients (it is not a load
    # balancer, a backend or a worker), so the firewall drops it (HAProxy and the services on this host
    # reach them over loopback).
    with pytest.raises(OSError):
        socket.create_connection((ADDRESS, port), timeout=3).close()


def test_the_services_run_with_the_database_settings_the_last_deploy_wrote(host):
    # side_effect.yml redeployed with connect_timeout=4: a reload would leave the old environment in place
    for unit, env_file in (("sagews-backend", "backend.env"), ("sagews-logserver", "logserver.env")):
        wanted = host.file(f"/etc/sagews/{env_file}").content_string
        assert "connect_timeout=4" in wanted
        line = next(ln for ln in wanted.splitlines() if ln.startswith("SAGEWS_DB_URL="))
        url = line.split("=", 1)[1].strip('"')
        pid = host.check_output(f"systemctl show -p MainPID --value {unit}")
        environ = host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ")
        assert f"SAGEWS_DB_URL={url}" in environ.splitlines(), unit


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_restarts_a_killed_service(host, unit):
    before = host.check_output(f"systemctl show -p MainPID --value {unit}")
    assert host.run(f"kill -9 {before}").rc == 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = host.check_output(f"systemctl show -p MainPID --value {unit}")
        if now not in ("0", before) and host.run(f"systemctl is-active {unit}").stdout.strip() == "active":
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"{unit} was not restarted after kill -9")
    # and it serves again: the whole path through HAProxy works
    if unit != "sagews-logserver":
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = requests.get(f"{BASE}/api/me", verify=CA, timeout=5)
            if r.status_code == 200:
                break
            time.sleep(0.5)
        assert r.status_code == 200
