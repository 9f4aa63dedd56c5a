"""PostgreSQL as the sagews services see it: TLS only, least-privilege application role, a synchronous
streaming replica that refuses writes, and a promotion that loses no committed row.

verify runs twice (molecule.yml): before side_effect.yml (pg-replica is a standby) and after it
(pg-replica promoted, pg-primary re-seeded as its replica). Each test belongs to one phase."""

import contextlib
import os
import time
import uuid

import psycopg2
import psycopg2.errors
import pytest
from psycopg2 import sql

PRIMARY, REPLICA = "172.30.4.10", "172.30.4.11"  # molecule.yml
EPH = os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]
CA = f"{EPH}/pki/ca/ca.crt"
ROWS_BEFORE_STOP = 1000  # side_effect.yml


def password():
    with open(f"{EPH}/state/postgresql-app.password") as f:
        return f.read().split()[0]


def connect(address, **kw):
    params = dict(
        host=address,
        dbname="sagews",
        user="sagews",
        password=password(),
        sslmode="verify-full",
        sslrootcert=CA,
        connect_timeout=5,
    )
    params.update(kw)
    conn = psycopg2.connect(**params)
    conn.autocommit = True
    return conn


def query(address, sql, args=None):
    # Not `with conn`: psycopg2 2.9 opens a transaction even in autocommit mode (CREATE DATABASE fails).
    with contextlib.closing(connect(address)) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else None


@pytest.fixture(scope="session")
def failed_over():
    return not query(REPLICA, "SELECT pg_is_in_recovery()")[0][0]


@pytest.fixture
def before(failed_over):
    if failed_over:
        pytest.skip("pre-failover check: pg-replica has been promoted (second verify)")


@pytest.fixture
def after(failed_over):
    if not failed_over:
        pytest.skip("post-failover check: side_effect.yml has not run yet (first verify)")


def name(host):
    return host.backend.get_hostname()


def wait_for_row(address, table, key, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if query(
            address, sql.SQL("SELECT count(*) FROM {} WHERE k = %s").format(sql.Identifier(table)), (key,)
        )[0][0]:
            return True
        time.sleep(0.1)
    return False


# --- both phases ------------------------------------------------------------------------------


def test_service_running_enabled_and_listening_on_the_private_address(host):
    svc = host.service("postgresql@15-main")
    assert svc.is_running and svc.is_enabled
    address = PRIMARY if name(host) == "pg-primary" else REPLICA
    assert host.socket(f"tcp://{address}:5432").is_listening


@pytest.mark.parametrize("address", [PRIMARY, REPLICA])
def test_connections_without_tls_are_refused(address):
    with pytest.raises(psycopg2.OperationalError, match="no encryption"):
        psycopg2.connect(
            host=address,
            dbname="sagews",
            user="sagews",
            password=password(),
            sslmode="disable",
            connect_timeout=5,
        )
    # The same client with TLS gets in: it is the missing TLS that is refused, not the address.
    assert query(address, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == [(True,)]


def test_wrong_password_is_refused_and_passwords_are_scram():
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        connect(PRIMARY, password="not-the-password")
    assert query(PRIMARY, "SHOW password_encryption") == [("scram-sha-256",)]


@pytest.mark.parametrize("address", [PRIMARY, REPLICA])
def test_the_app_role_cannot_create_roles_or_databases(address, failed_over):
    writable = PRIMARY if not failed_over else REPLICA
    if address != writable:
        pytest.skip("privileges are checked on the writable server")
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        query(address, "CREATE ROLE intruder LOGIN")
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        query(address, "CREATE DATABASE intruder")
    assert query(
        address,
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication FROM pg_roles "
        "WHERE rolname = current_user",
    ) == [(False, False, False, False)]
    assert query(address, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'sagews'") == [
        ("sagews",)
    ]


def test_max_connections_sized_from_the_inventory():
    # 1 backend (pg-replica) x pool 10 + 0 log servers x 5 + headroom 20 (molecule.yml, role defaults)
    assert query(PRIMARY, "SHOW max_connections") == [("30",)]


# --- before the failover ---------------------------------------------------------------------


def test_a_row_written_on_the_primary_appears_on_the_replica(before):
    query(PRIMARY, "CREATE TABLE IF NOT EXISTS replication_probe (k text PRIMARY KEY)")
    key = uuid.uuid4().hex
    query(PRIMARY, "INSERT INTO replication_probe VALUES (%s)", (key,))
    assert wait_for_row(REPLICA, "replication_probe", key)


def test_the_replica_refuses_writes(before):
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
        query(REPLICA, "CREATE TABLE should_fail (k int)")


def test_replication_is_synchronous_streaming_through_a_slot(host, before):
    out = host.run("sagews-pg-lag --max-bytes 16777216")
    assert out.rc == 0, out.stdout + out.stderr
    if name(host) == "pg-primary":
        # ANY 1 (...) is quorum commit: sync_state says "quorum" (a plain list would say "sync").
        assert "replica=pg_replica state=streaming sync=quorum" in out.stdout
    else:
        assert "role=replica receiver=streaming" in out.stdout


# --- after the failover ----------------------------------------------------------------------


def test_the_promoted_replica_holds_every_committed_row_and_accepts_writes(after):
    assert query(REPLICA, "SELECT count(*), max(id) FROM failover_probe") == [
        (ROWS_BEFORE_STOP, ROWS_BEFORE_STOP)
    ]
    query(REPLICA, "INSERT INTO failover_probe VALUES (%s, 'after promotion')", (ROWS_BEFORE_STOP + 1,))


def test_the_old_primary_came_back_as_a_replica_of_the_new_one(after):
    assert query(PRIMARY, "SELECT pg_is_in_recovery()") == [(True,)]
    query(REPLICA, "CREATE TABLE IF NOT EXISTS rejoin_probe (k text PRIMARY KEY)")
    key = uuid.uuid4().hex
    query(REPLICA, "INSERT INTO rejoin_probe VALUES (%s)", (key,))
    assert wait_for_row(PRIMARY, "rejoin_probe", key)
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
        query(PRIMARY, "INSERT INTO rejoin_probe VALUES ('split brain')")
    assert query(PRIMARY, "SELECT count(*) FROM failover_probe WHERE id <= %s", (ROWS_BEFORE_STOP,)) == [
        (ROWS_BEFORE_STOP,)
    ]


def test_the_new_primary_streams_to_the_rejoined_host(host, after):
    if name(host) != "pg-replica":
        pytest.skip("checked on the new primary")
    out = host.run("sagews-pg-lag")
    assert out.rc == 0, out.stdout + out.stderr
    assert "replica=pg_primary state=streaming" in out.stdout


def test_promotion_time_is_recorded(after):
    with open(f"{EPH}/promotion-seconds") as f:
        seconds = float(f.read())
    print(f"promote-db.yml took {seconds} s")
    assert seconds < 120
