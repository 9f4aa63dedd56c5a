"""The all-in-one appliance after site.yml: every tier that has landed is up and wired together."""

import socket

import pytest

ADDRESS = "172.30.10.10"  # molecule.yml


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
