"""The database tier as the services and the operator see it right after converge: an etcd cluster
of three over TLS, Patroni running PostgreSQL 15 on both database hosts with a synchronous standby,
TLS-only scram access, a least-privilege application role, and the URL the services use finding the
primary by itself. The drills (test_drill.py) run after these checks."""

from __future__ import annotations

import asyncio
import socket
import uuid

import psycopg2
import psycopg2.errors
import pytest
from conftest import (
    HOSTS,
    WITNESS,
    app_password,
    cluster_members,
    connect,
    healthy,
    multi_host_url,
    primary,
    query,
    sh,
    wait_for,
)
from sqlalchemy import text

from sagews.db import Database

ETCDCTL = (
    "etcdctl --cacert=/etc/ssl/sagews/ca.crt --cert=/etc/ssl/sagews/etcd.crt --key=/etc/ssl/sagews/etcd.key"
)


def test_patroni_runs_postgresql_and_debians_unit_is_masked():
    for name in HOSTS:
        assert sh(name, "systemctl is-active patroni.service").stdout.strip() == "active"
        assert sh(name, "systemctl is-enabled patroni.service").stdout.strip() == "enabled"
        masked = sh(name, "systemctl is-enabled postgresql@15-main.service", check=False).stdout.strip()
        assert masked == "masked", name


def test_patronictl_shows_a_leader_and_a_synchronous_standby():
    wait_for("the standby to stream", healthy, timeout=60)
    members = cluster_members("pg-2")
    roles = {name: m["Role"] for name, m in members.items()}
    if members["pg-1"]["TL"] == 1:  # no failover yet: the bootstrap host (db_primary) leads
        assert roles == {"pg-1": "Leader", "pg-2": "Sync Standby"}, members
    leader = next(name for name, role in roles.items() if role == "Leader")
    out = sh(leader, "sagews-pg-lag --max-bytes 16777216")
    assert "state=streaming sync=sync" in out.stdout, out.stdout


def test_cluster_wide_settings_come_from_the_inventory():
    config = sh("pg-1", "patronictl show-config").stdout
    for line in (
        "ttl: 7",
        "loop_wait: 1",
        "retry_timeout: 3",
        "synchronous_mode: true",
        "max_connections: 25",
        "use_pg_rewind: true",
    ):
        assert line in config, config
    # 0 backends x 10 + 1 log server (pg-backup) x 5 + headroom 20 (molecule.yml, role defaults)
    assert query(HOSTS["pg-1"], "SHOW max_connections") == [("25",)]
    assert query(HOSTS["pg-1"], "SHOW data_checksums") == [("on",)]


def test_etcd_has_three_healthy_members_over_tls():
    out = sh(WITNESS[0], f"{ETCDCTL} --endpoints=https://{WITNESS[1]}:2379 member list -w simple")
    names = sorted(line.split(", ")[2] for line in out.stdout.splitlines())
    assert names == ["pg-1", "pg-2", "pg-backup"]
    assert all("https://" in line and "http://" not in line for line in out.stdout.splitlines())
    health = sh(WITNESS[0], f"{ETCDCTL} --endpoints=https://{WITNESS[1]}:2379 endpoint health --cluster")
    assert (health.stdout + health.stderr).count("is healthy") == 3, health.stdout + health.stderr


def test_etcd_wants_a_client_certificate_and_only_members_reach_it():
    health = f"curl -sS --cacert /etc/ssl/sagews/ca.crt https://{HOSTS['pg-1']}:2379/health"
    # On a member, with the member's certificate: served...
    ok = sh(WITNESS[0], f"{health} --cert /etc/ssl/sagews/etcd.crt --key /etc/ssl/sagews/etcd.key")
    assert '"health":"true"' in ok.stdout, ok.stdout
    # ...and the same request without a client certificate is refused in the TLS handshake.
    assert sh(WITNESS[0], health, check=False).returncode != 0
    # The test host is neither an etcd member nor a Patroni host: the firewall drops it.
    with pytest.raises(OSError):
        socket.create_connection((HOSTS["pg-1"], 2379), timeout=3).close()


def test_patroni_rest_api_wants_a_certificate_and_a_password_for_changes():
    api = f"https://{HOSTS['pg-1']}:8008"
    tls = (
        "--cacert /etc/ssl/sagews/ca.crt"
        " --cert /etc/ssl/sagews/postgresql.crt --key /etc/ssl/sagews/postgresql.key"
    )
    no_cert = sh("pg-2", f"curl -sS --cacert /etc/ssl/sagews/ca.crt {api}/health", check=False)
    assert no_cert.returncode != 0, no_cert.stdout
    code = "-o /dev/null -w '%{http_code}'"
    assert sh("pg-2", f"curl -sS {tls} {code} {api}/health").stdout == "200"
    assert sh("pg-2", f"curl -sS {tls} {code} -X POST {api}/reload").stdout == "401"
    assert sh("pg-2", f"curl -sS {tls} {code} -u patroni:wrong -X POST {api}/reload").stdout == "401"
    # The test host is not a database host: the REST API is closed to it.
    with pytest.raises(OSError):
        socket.create_connection((HOSTS["pg-1"], 8008), timeout=3).close()


@pytest.mark.parametrize("name", list(HOSTS))
def test_connections_without_tls_are_refused(name):
    with pytest.raises(psycopg2.OperationalError, match="no encryption"):
        psycopg2.connect(
            host=HOSTS[name],
            dbname="sagews",
            user="sagews",
            password=app_password(),
            sslmode="disable",
            connect_timeout=5,
        )
    # The same client with TLS gets in: it is the missing TLS that is refused, not the address.
    assert query(HOSTS[name], "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == [(True,)]


def test_wrong_password_is_refused_and_passwords_are_scram():
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        connect(HOSTS["pg-1"], password="not-the-password")
    assert query(HOSTS["pg-1"], "SHOW password_encryption") == [("scram-sha-256",)]
    # Patroni's own roles exist with the least they need: replication, and rewind without superuser.
    roles = "SELECT rolname FROM pg_roles WHERE rolname IN ('replicator', 'rewind') AND NOT rolsuper"
    assert sorted(r[0] for r in query(HOSTS["pg-1"], roles)) == ["replicator", "rewind"]


def test_the_app_role_cannot_create_roles_or_databases():
    address = HOSTS[primary()]
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        query(address, "CREATE ROLE intruder LOGIN")
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        query(address, "CREATE DATABASE intruder")
    assert query(
        address,
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication FROM pg_roles"
        " WHERE rolname = current_user",
    ) == [(False, False, False, False)]
    assert query(address, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'sagews'") == [
        ("sagews",)
    ]


def test_a_commit_is_on_the_standby_when_it_returns_and_the_standby_refuses_writes():
    leader = primary()
    standby = next(name for name in HOSTS if name != leader)
    key = uuid.uuid4().hex
    query(HOSTS[leader], "CREATE TABLE IF NOT EXISTS replication_probe (k text PRIMARY KEY)")
    # synchronous_commit = on: the commit returned once the standby flushed it; replay follows at once.
    query(HOSTS[leader], "INSERT INTO replication_probe VALUES (%s)", (key,))
    count = "SELECT count(*) FROM replication_probe WHERE k = %s"
    wait_for("the row on the standby", lambda: query(HOSTS[standby], count, (key,))[0][0], timeout=10)
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
        query(HOSTS[standby], "INSERT INTO replication_probe VALUES ('split brain')")


@pytest.mark.parametrize("order", [["pg-1", "pg-2"], ["pg-2", "pg-1"]])
def test_the_services_url_finds_the_primary_whatever_the_order(order):
    """The contract with the app roles: SAGEWS_DB_URL lists every database host (docs/database.md)."""

    async def where() -> str:
        db = Database(multi_host_url(order))
        try:
            return await db.run(lambda s: s.execute(text("SELECT host(inet_server_addr())")).scalar_one())
        finally:
            db.close()

    assert asyncio.run(where()) == HOSTS[primary()]
