"""The base every host gets (common role), memcached and nginx as site.yml left them on the all-in-one
host: what the per-role scenarios checked before site.yml deployed the whole appliance (those scenarios
are gone; docs/testing.md says where each check went)."""

from __future__ import annotations

import socket
import time

import pytest

ADDRESS = "172.30.10.10"  # molecule.yml


def can_connect(port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((ADDRESS, port), timeout=timeout):
            return True
    except OSError:
        return False


def test_sagews_system_user_and_private_directories(host):
    user = host.user("sagews")
    assert user.exists and user.uid < 1000 and user.shell == "/usr/sbin/nologin"
    for path, owner, mode in (
        ("/var/lib/sagews", "sagews", 0o750),
        ("/etc/sagews", "root", 0o750),
        ("/var/log/sagews", "sagews", 0o750),
    ):
        d = host.file(path)
        assert d.is_directory and d.user == owner and d.group == "sagews" and d.mode == mode, path


def test_time_zone_locale_and_journald_retention(host):
    assert host.run("date +%Z").stdout.strip() == "UTC"
    assert "en_US.utf8" in host.run("locale -a").stdout
    assert host.service("systemd-timesyncd").is_enabled
    config = host.run("systemd-analyze cat-config systemd/journald.conf").stdout
    assert "SystemMaxUse=1G" in config and "MaxRetentionSec=4week" in config


def test_services_get_the_raised_open_file_limit(host):
    # systemd cannot go above the hard limit PID 1 has (20,000 on our CI machines); without the role
    # the soft limit would be 1,024.
    pid1 = host.run("awk '/Max open files/ {print $5}' /proc/1/limits").stdout.strip()
    expected = min(65536, int(pid1)) if pid1.isdigit() else 65536
    out = host.run("systemd-run --uid=sagews --pipe --wait -q sh -c 'ulimit -Sn; ulimit -Hn'")
    assert out.rc == 0, out.stderr
    assert out.stdout.split() == [str(expected), str(expected)]


def test_a_port_nobody_opened_is_blocked(host):
    host.run("systemd-run --unit=probe-9999 python3 -m http.server --bind 0.0.0.0 9999")
    try:
        deadline = time.monotonic() + 20
        while not host.socket("tcp://0.0.0.0:9999").is_listening and time.monotonic() < deadline:
            time.sleep(0.2)
        # listening inside the host, yet the network cannot reach it (while HTTPS, opened by a role, is)
        assert host.run("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9999/").stdout == "200"
        assert not can_connect(9999)
        assert can_connect(443)
    finally:
        host.run("systemctl stop probe-9999")


def test_memcached_listens_on_loopback_and_the_private_address_only(host):
    for port_spec in (f"tcp://{ADDRESS}:11211", "tcp://127.0.0.1:11211"):
        assert host.socket(port_spec).is_listening, port_spec
    assert not host.socket("tcp://0.0.0.0:11211").is_listening
    assert not host.socket(f"udp://{ADDRESS}:11211").is_listening, "UDP must be off"
    stats = host.run("printf 'stats settings\\r\\nquit\\r\\n' | nc -q 2 127.0.0.1 11211").stdout
    assert "STAT maxbytes 268435456" in stats and "STAT maxconns 4096" in stats


def test_nginx_listens_on_loopback_and_the_private_address_only(host):
    assert host.socket(f"tcp://{ADDRESS}:8081").is_listening
    assert host.socket("tcp://127.0.0.1:8081").is_listening
    assert not host.socket("tcp://0.0.0.0:8081").is_listening
    assert not can_connect(8081), "only the load balancers (here: loopback) may reach nginx"


@pytest.mark.parametrize(
    "path",
    [
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2f..%2f..%2fetc/passwd",
        "/etc/passwd",
        "/static/.env",
        "/pub/../static/.env",
        "/.git/config",
        "/static/",
        "/static/js/",
        "/pub/",
    ],
)
def test_nginx_serves_nothing_outside_its_roots_and_no_listing(host, path):
    out = host.run(f"curl -s -o /tmp/body -w '%{{http_code}}' --path-as-is http://127.0.0.1:8081{path}")
    assert out.stdout in ("400", "403", "404"), f"{path} -> {out.stdout}"
    body = host.file("/tmp/body").content_string if host.file("/tmp/body").exists else ""
    assert "root:" not in body and "Index of" not in body, path


def test_static_assets_are_revalidated_and_compressed(host):
    raw = host.run(
        "curl -s -D - -o /dev/null -H 'Accept-Encoding: gzip' http://127.0.0.1:8081/static/js/protocol.js"
    ).stdout
    head = raw.lower()
    assert "cache-control: no-cache" in head and "content-encoding: gzip" in head
    assert "content-type: application/javascript" in head and "x-content-type-options: nosniff" in head
    # The ETag as sent (a gzipped response's is weak, W/"..."; lower-casing the W breaks it), sent back
    # the way a browser revalidates: same Accept-Encoding, If-None-Match.
    etag = next(ln.split(":", 1)[1].strip() for ln in raw.splitlines() if ln.lower().startswith("etag:"))
    again = host.run(
        f"curl -s -o /dev/null -w '%{{http_code}}' -H 'Accept-Encoding: gzip' -H 'If-None-Match: {etag}' "
        "http://127.0.0.1:8081/static/js/protocol.js"
    )
    assert again.stdout == "304", (etag, again.stdout)
