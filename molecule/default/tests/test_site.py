"""The all-in-one appliance after site.yml: every tier that has landed is up and wired together.

Checked from the test host as a browser or a service would: HTTPS through HAProxy with the
appliance CA's certificate, /static/ served by nginx behind it, PostgreSQL over TLS only."""

import contextlib
import os
import socket
import ssl

import psycopg2
import pytest
import requests

ADDRESS = "172.30.10.10"  # molecule.yml
EPH = os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]
CA = f"{EPH}/pki/ca/ca.crt"


def test_base_firewall_is_up(host):
    assert host.service("nftables").is_running
    assert "policy drop" in host.run("nft list chain inet sagews input").stdout


def test_memcached_serves_the_local_backend(host):
    assert host.service("memcached").is_running
    # The backend on this host talks to memcached over loopback (always allowed)...
    out = host.run("printf 'set k 0 60 2\\r\\nok\\r\\nget k\\r\\nquit\\r\\n' | nc -q 2 127.0.0.1 11211")
    assert "VALUE k 0 2" in out.stdout


def test_memcached_closed_to_other_hosts():
    # ...while the test host is not a backend of this deployment: the firewall keeps it out.
    with pytest.raises(OSError):
        socket.create_connection((ADDRESS, 11211), timeout=3).close()


def test_every_service_is_running_and_enabled(host):
    for unit in ("haproxy", "nginx", "postgresql@15-main", "memcached", "nftables"):
        svc = host.service(unit)
        assert svc.is_running and svc.is_enabled, unit


def test_https_is_served_with_the_appliance_certificate():
    ctx = ssl.create_default_context(cafile=CA)  # verifies the chain and that the address is in the SANs
    raw = socket.create_connection((ADDRESS, 443), timeout=5)
    with ctx.wrap_socket(raw, server_hostname=ADDRESS) as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        sans = [v for k, v in tls.getpeercert()["subjectAltName"] if k == "IP Address"]
        assert ADDRESS in sans


def test_static_assets_come_from_nginx_through_haproxy():
    r = requests.get(f"https://{ADDRESS}/static/index.html", verify=CA, timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    assert "max-age" in r.headers["Strict-Transport-Security"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_plain_http_redirects_to_https():
    r = requests.get(f"http://{ADDRESS}/static/index.html", allow_redirects=False, timeout=5)
    assert r.status_code == 301
    assert r.headers["Location"].startswith("https://")


def pg_connect(**kw):
    with open(f"{EPH}/state/postgresql-app.password") as f:
        password = f.read().split()[0]
    params = dict(host=ADDRESS, dbname="sagews", user="sagews", password=password, connect_timeout=5)
    params.update(kw)
    return psycopg2.connect(**params)


def test_postgresql_serves_the_app_role_over_verified_tls():
    with contextlib.closing(pg_connect(sslmode="verify-full", sslrootcert=CA)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT current_user, ssl FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)"
            " WHERE pid = pg_backend_pid()"
        )
        assert cur.fetchone() == ("sagews", True)


def test_postgresql_refuses_connections_without_tls():
    with pytest.raises(psycopg2.OperationalError, match=r"no encryption|SSL off"):
        pg_connect(sslmode="disable").close()
