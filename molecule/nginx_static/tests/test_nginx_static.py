"""nginx as the load balancers see it: types, caching, CSP on /pub/, nothing outside the roots, gzip,
published pages pulled from a backend (a stand-in on nginx-outsider) and cached, firewall."""

import http.client

import pytest
import requests

SERVER = "172.30.6.10"  # molecule.yml
PORT = 8081
BASE = f"http://{SERVER}:{PORT}"


def static_host(host):
    return host.backend.get_hostname() == "nginx-static"


def raw_get(path):
    """GET a path exactly as written (no client-side normalisation of ../ or %2e)."""
    conn = http.client.HTTPConnection(SERVER, PORT, timeout=3)
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), body


def only_static(host):
    if not static_host(host):
        pytest.skip("checked once, from the test host (as nginx-static's parameter)")


def test_listens_only_on_loopback_and_private_address(host):
    only_static(host)
    assert host.service("nginx").is_running and host.service("nginx").is_enabled
    assert host.socket(f"tcp://{SERVER}:{PORT}").is_listening
    assert host.socket(f"tcp://127.0.0.1:{PORT}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{PORT}").is_listening
    assert not host.socket("tcp://0.0.0.0:80").is_listening, "Debian's default site must not run"


def test_content_types(host):
    only_static(host)
    expected = {
        "/static/app.css": "text/css",
        "/static/app.0123abcd89.js": "application/javascript",
        "/pub/demo": "text/html",
        "/pub/demo/raw": "application/json",
    }
    for path, ctype in expected.items():
        r = requests.get(BASE + path, timeout=3)
        assert r.status_code == 200, path
        assert r.headers["Content-Type"].split(";")[0] == ctype, path
        assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_fingerprinted_assets_cached_for_a_year_others_revalidated(host):
    only_static(host)
    r = requests.get(BASE + "/static/app.0123abcd89.js", timeout=3)
    assert "max-age=31536000" in r.headers["Cache-Control"] and "immutable" in r.headers["Cache-Control"]
    r = requests.get(BASE + "/static/app.css", timeout=3)
    assert r.headers["Cache-Control"] == "no-cache"
    etag = r.headers["ETag"]
    again = requests.get(BASE + "/static/app.css", headers={"If-None-Match": etag}, timeout=3)
    assert again.status_code == 304


def test_gzip(host):
    only_static(host)
    r = requests.get(BASE + "/static/app.css", headers={"Accept-Encoding": "gzip"}, timeout=3)
    assert r.headers.get("Content-Encoding") == "gzip"
    assert "color: #123" in r.text


def test_restrictive_csp_on_pub(host):
    only_static(host)
    for path in ["/pub/demo", "/pub/demo/raw", "/pub/does/not/exist"]:
        r = requests.get(BASE + path, timeout=3)
        csp = r.headers.get("Content-Security-Policy", "")
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, path
        assert "script-src 'self'" in csp and "unsafe-eval" not in csp, path
    assert "Content-Security-Policy" not in requests.get(BASE + "/static/app.css", timeout=3).headers


def test_nothing_outside_the_roots(host):
    only_static(host)
    for path in [
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2f..%2f..%2fetc/passwd",
        "/etc/passwd",
        "/static/.env",
        "/static/%2eenv",
        "/pub/../static/.env",
        "/.git/config",
    ]:
        status, _, body = raw_get(path)
        assert status in (400, 403, 404), f"{path} -> {status}"
        assert b"root:" not in body and b"SECRET" not in body, path
    # No directory listings.
    for path in ["/static/", "/static/sub/", "/pub/", "/"]:
        status, _, body = raw_get(path)
        assert status in (403, 404), f"{path} -> {status}"
        assert b"Index of" not in body and b"page.html" not in body, path
    assert raw_get("/static/sub/page.html")[0] == 200  # ...while the file itself is served


def test_unsynced_published_page_is_pulled_from_a_backend_and_cached(host):
    only_static(host)
    r1 = requests.get(BASE + "/pub/other/raw", timeout=5)
    assert r1.status_code == 200
    assert r1.text.startswith("nginx-outsider /pub/other/raw")
    assert "default-src 'none'" in r1.headers["Content-Security-Policy"]
    r2 = requests.get(BASE + "/pub/other/raw", timeout=5)
    assert r2.headers["X-Cache-Status"] == "HIT" and r2.text == r1.text


def test_not_reachable_from_a_host_that_is_not_a_load_balancer(host):
    if static_host(host):
        pytest.skip("checked from nginx-outsider")
    assert host.run(f"nc -z -w 3 {SERVER} {PORT}").rc != 0, "nginx answered a host that is not allowed"
    assert requests.get(BASE + "/healthz", timeout=3).text == "ok\n"  # ...while the allowed test host gets in
