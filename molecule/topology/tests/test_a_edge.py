"""The edge as a browser and an operator see it: the VIP, TLS with the appliance CA, HTTP -> HTTPS,
the app shell and static files from nginx, SockJS sessions kept on one backend by both load balancers,
the stats page and the per-source rate limit."""

from __future__ import annotations

import base64
import json
import secrets

import pytest
import requests
from conftest import BACKENDS, BASE, CA, HOSTS, LBS, VIP, name, node, once


def test_load_balancers_run_haproxy_and_keepalived(host):
    if name(host) not in LBS:
        pytest.skip("HAProxy runs only on the load balancers")
    for unit in ("haproxy", "keepalived"):
        assert host.service(unit).is_running and host.service(unit).is_enabled, unit
    pem = host.file("/etc/haproxy/certs/sagews.pem")
    assert pem.mode == 0o600 and pem.user == "root"
    assert host.run("haproxy -c -f /etc/haproxy/haproxy.cfg").rc == 0


def test_vip_held_by_exactly_one_load_balancer():
    holders = [lb for lb in LBS if f"{VIP}/" in node(lb).check_output("ip -4 -o addr show")]
    assert len(holders) == 1, holders


def test_plain_http_redirects_to_https(host):
    once(host)
    r = requests.get(f"http://{VIP}/some/page?x=1", allow_redirects=False, timeout=3)
    assert r.status_code == 301
    assert r.headers["Location"] == f"https://{VIP}/some/page?x=1"


def test_tls_with_the_appliance_certificate_and_hsts(host):
    once(host)
    r = requests.get(f"{BASE}/healthz", verify=CA, timeout=5)
    assert r.status_code == 200 and r.text == "ok\n"  # a backend's liveness, through HAProxy over TLS
    assert r.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{BASE}/healthz", timeout=3)  # the system store does not know the appliance CA


def test_app_shell_and_static_files_come_from_nginx(host):
    once(host)
    r = requests.get(f"{BASE}/", verify=CA, timeout=5)
    assert r.status_code == 200 and "<html" in r.text.lower()
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    r = requests.get(f"{BASE}/static/js/protocol.js", verify=CA, timeout=5)
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-cache"
    assert "gzip" in requests.get(f"{BASE}/static/js/protocol.js", verify=CA, timeout=5).headers.get(
        "Content-Encoding", ""
    )
    assert requests.get(f"{BASE}/static/", verify=CA, timeout=5).status_code in (403, 404)  # no listing
    assert requests.get(f"{BASE}/static/.env", verify=CA, timeout=5).status_code == 404


def stats(lb: str) -> dict[str, dict[str, str]]:
    """HAProxy's server table (runtime API) on a load balancer: backends/<server> -> columns."""
    out = node(lb).check_output("echo 'show stat' | socat stdio unix-connect:/run/haproxy/admin.sock")
    lines = out.splitlines()
    head = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(head, ln.split(","), strict=False)) for ln in lines[1:] if ln]
    return {f"{r['pxname']}/{r['svname']}": r for r in rows}


def sockjs_xhr(base: str, path: str, cookies, **kw) -> requests.Response:
    return requests.post(f"{base}{path}", cookies=cookies, verify=CA, timeout=10, **kw)


def test_sockjs_sessions_stick_to_one_backend_on_both_load_balancers(host):
    """xhr transports send each message as its own request: without stickiness on the backend's SockJS
    prefix (/sockjs/<server>/<session>/...), half of them reach a backend that does not know the
    session and get 404. The other load balancer must know the session too (stick table over peers)."""
    once(host)
    s = requests.Session()  # verify= on each request: REQUESTS_CA_BUNDLE in the environment beats s.verify
    s.get(f"{BASE}/api/me", verify=CA, timeout=5)
    user = f"sticky{secrets.token_hex(3)}"
    r = s.post(
        f"{BASE}/api/signup", json={"username": user, "password": "correct horse battery"},
        headers={"X-XSRFToken": s.cookies["_xsrf"]}, verify=CA, timeout=10,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    before = {b: int(stats("topo-lb1")[f"backends/{b}"]["stot"]) for b in BACKENDS}
    for n in range(8):
        sid = secrets.token_hex(8)
        opened = sockjs_xhr(BASE, f"/sockjs/{n:03d}/{sid}/xhr", s.cookies)
        assert opened.status_code == 200 and opened.text.startswith("o"), opened.text
        for i in range(4):
            # each request a new connection, through either load balancer
            base = BASE if i % 2 == 0 else f"https://{HOSTS[LBS[i % 4 // 2]]}"
            msg = json.dumps([json.dumps({"id": i, "type": "ping"})])
            sent = sockjs_xhr(base, f"/sockjs/{n:03d}/{sid}/xhr_send", s.cookies, data=msg)
            assert sent.status_code == 204, (base, sent.status_code, sent.text)
            got = sockjs_xhr(base, f"/sockjs/{n:03d}/{sid}/xhr", s.cookies)
            assert got.status_code == 200 and '\\"pong\\"' in got.text, (base, got.text)
    after = {b: int(stats("topo-lb1")[f"backends/{b}"]["stot"]) for b in BACKENDS}
    assert all(after[b] > before[b] for b in BACKENDS), "sessions were not spread over both backends"


def test_stats_page_needs_the_generated_password(host):
    if name(host) not in LBS:
        pytest.skip("stats only on the load balancers")
    pwfile = host.file("/etc/haproxy/stats.password")
    assert pwfile.mode == 0o600 and pwfile.user == "root"
    password = base64.b64decode(host.run("base64 -w0 /etc/haproxy/stats.password").stdout).decode().strip()
    url = f"http://{HOSTS[name(host)]}:8404/"
    assert requests.get(url, timeout=3).status_code == 401
    r = requests.get(url, auth=("admin", password), timeout=3)
    assert r.status_code == 200 and "Statistics Report" in r.text


def test_new_connections_per_source_are_rate_limited(host):
    if name(host) != "topo-app1":
        pytest.skip("run from topo-app1, a source of its own (the limit would then block the test host)")
    # 100 new connections in a few seconds from one source; the scenario allows 60 per 10 s.
    out = host.check_output(
        "ok=0; for i in $(seq 100); do "
        f"curl -s -o /dev/null -m 2 http://{VIP}/ && ok=$((ok+1)); done; echo $ok"
    )
    print(f"rate limit: {out}/100 connections accepted from one source")
    assert 50 <= int(out) <= 70
