"""memcached as the backends see it: reachable from allowed hosts, closed to everyone else."""

import socket
import uuid

import memcache
import pytest

SERVER = "172.30.2.10"  # molecule.yml
PORT = 11211


def memcached_host(host):
    return host.backend.get_hostname() == "memcached-server"


@pytest.fixture
def client():
    mc = memcache.Client([f"{SERVER}:{PORT}"], socket_timeout=3)
    yield mc
    mc.disconnect_all()


def test_service_running_and_enabled(host):
    if not memcached_host(host):
        pytest.skip("memcached runs only on memcached-server")
    svc = host.service("memcached")
    assert svc.is_running
    assert svc.is_enabled


def test_listens_on_private_address_and_loopback_only(host):
    if not memcached_host(host):
        pytest.skip("memcached runs only on memcached-server")
    assert host.socket(f"tcp://{SERVER}:{PORT}").is_listening
    assert host.socket(f"tcp://127.0.0.1:{PORT}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{PORT}").is_listening
    assert not host.socket(f"udp://{SERVER}:{PORT}").is_listening, "UDP must be off"


def test_limits_from_variables(host, client):
    if not memcached_host(host):
        pytest.skip("memcached runs only on memcached-server")
    ((_, raw),) = client.get_stats("settings")
    settings = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
    assert int(settings["maxbytes"]) == 64 * 1024 * 1024
    assert int(settings["maxconns"]) == 512


def test_set_and_get_over_the_network_from_allowed_host(host, client):
    if not memcached_host(host):
        pytest.skip("the allowed client is the test host; checked once")
    key, value = f"sagews-test-{uuid.uuid4().hex}", {"workspace": "w1", "n": 42}
    assert client.set(key, value, time=60)
    assert client.get(key) == value


def test_not_reachable_from_a_host_not_allowed(host):
    if memcached_host(host):
        pytest.skip("checked from memcached-outsider")
    probe = host.run(f"nc -z -w 3 {SERVER} {PORT}")
    assert probe.rc != 0, "memcached answered a host that is not allowed"
    # ...while the allowed test host, at the same moment, gets in: memcached is up.
    with socket.create_connection((SERVER, PORT), timeout=3):
        pass
