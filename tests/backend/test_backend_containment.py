"""Issue 19, backend side: attacks on the real backend (PostgreSQL, memcached, a worker) and what holds.

Each test plays the attack an earlier backend fell to (docs/security.md, "Backend") and asserts
containment: forged or pickled memcached entries, password guessing against an owner (also behind a
shared NAT, also distributed), inputs that used to crash or wedge the backend, HTML without CSP.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sagews.backend import accounts
from sagews.backend.accounts import hash_token
from tests.backend.conftest import Backend, Memcached
from tests.backend.helpers import SockClient
from tests.backend.test_backend_protocol import make_ws


def mc_raw(mc: Memcached, command: bytes) -> bytes:
    """One raw memcached command, as any process on the host could send it (no client library)."""
    with socket.create_connection(("127.0.0.1", mc.port), timeout=5) as s:
        s.sendall(command)
        out = b""
        while not out.endswith((b"STORED\r\n", b"END\r\n", b"NOT_STORED\r\n", b"ERROR\r\n")):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def mc_set(mc: Memcached, key: str, value: bytes, flags: int = 0) -> None:
    head = f"set {key} {flags} 300 {len(value)}\r\n".encode()
    assert mc_raw(mc, head + value + b"\r\n") == b"STORED\r\n"


def mc_get(mc: Memcached, key: str) -> bytes | None:
    out = mc_raw(mc, f"get {key}\r\n".encode())
    if out == b"END\r\n":
        return None
    header, rest = out.split(b"\r\n", 1)
    return rest[: int(header.split()[3])]


class Planted:
    """What a hostile cell would pickle into memcached: unpickling it runs os.mkdir(path)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.path,))


async def test_forged_and_pickled_cache_entries_are_ignored(
    backend: Backend, memcached: Memcached, tmp_path: Path
) -> None:
    boss = await backend.app.db.run(
        accounts.create_account, "boss", accounts.hash_password("boss pass 1"), True
    )
    token = secrets.token_urlsafe(32)
    key = f"sagews:sess:{hash_token(token)}"
    intruder = backend.user()
    intruder.cookies = {"sagews_session": token}
    # (a) a forged session entry in the format the backend itself once stored: nobody is signed in
    mc_set(memcached, key, json.dumps({"id": boss.id, "name": "boss", "is_admin": True}).encode())
    assert (await intruder.me())["user"] is None
    assert (await intruder.req("GET", "/api/admin/workers"))[0] == 401
    # (b) a pickle under a session key (flags 1: "pickled" to python-memcached) is never unpickled
    marker = tmp_path / "unpickled"
    mc_set(memcached, key, pickle.dumps(Planted(str(marker))), flags=1)
    assert (await intruder.me())["user"] is None
    assert not marker.exists()
    # (c) a genuine entry copied under another session's key: the MAC binds the key
    real = await backend.new_user("genuine")
    assert (await real.me())["user"]["name"] == "genuine"  # its lookup is cached now
    genuine = mc_get(memcached, f"sagews:sess:{hash_token(real.cookies['sagews_session'])}")
    assert genuine is not None and genuine.startswith(b"s1:")
    mc_set(memcached, key, genuine)
    assert (await intruder.me())["user"] is None
    # (d) a forged workspace entry grants no membership
    owner = await backend.new_user("wsowner")
    ws = await make_ws(owner)
    attacker = await backend.new_user("wsattacker")
    me = await backend.app.db.run(accounts.find_login, "wsattacker")
    forged = {"id": ws, "name": "x", "owner_id": me[0].id, "owner": "wsattacker",
              "members": {str(me[0].id): "owner"}, "worker_id": None, "head_commit": None,
              "last_activity": None}  # fmt: skip
    mc_set(memcached, f"sagews:ws:{ws}", json.dumps(forged).encode())
    assert (await attacker.req("GET", f"/api/workspaces/{ws}"))[0] == 404
    _, metrics = await owner.req("GET", "/metrics")
    rejected = [ln for ln in metrics.decode().splitlines() if ln.startswith("sagews_cache_rejected ")]
    assert rejected and float(rejected[0].split()[1]) >= 4, rejected


async def batches(coros: list[Any], size: int = 8) -> list[Any]:
    """Await ``coros`` ``size`` at a time (the HTTP client queues more than 10, and its request timeout
    counts the queue; argon2 on a loaded machine takes a second each)."""
    out: list[Any] = []
    for i in range(0, len(coros), size):
        out += await asyncio.gather(*coros[i : i + size])
    return out


async def test_login_lockout_stops_guessing_not_the_owner(
    backend_config: Callable[..., Any], start_backend: Any, pg_url: str, memcached: Memcached
) -> None:
    b: Backend = await start_backend(
        backend_config(
            pg_url, memcached=[memcached.address], xheaders=True,  # client address from X-Forwarded-For
            login_backoff_seconds=60.0, login_account_failures=20,
            password_threads=2,  # argon2 (64 MiB, ~0.1 s of CPU each): 60 logins here
        )
    )  # fmt: skip
    owner = b.user("10.0.0.1")
    assert (await owner.signup("victim"))[0] == 200
    assert "sagews_device" in owner.cookies  # this browser is known to the account from now on
    assert (await b.user("10.0.0.9").signup("neighbour"))[0] == 200
    # a guesser behind the owner's NAT (10.0.0.66): free attempts, then backoff for that source
    guesser = b.user("10.0.0.66")
    for _ in range(b.app.config.login_free_attempts + 1):
        code, body = await guesser.login("victim", "wrong password")
        assert code == 403 and body["code"] == "bad_login", body
    code, body = await guesser.login("victim", "correct horse battery")
    assert code == 429 and body["code"] == "rate_limited" and 50 < body["retry_after"] <= 60, body
    # the owner is not locked out: from another address, and from a known browser behind the same NAT
    assert (await b.user("10.0.0.2").login("victim"))[0] == 200
    owner.ip = "10.0.0.66"
    assert (await owner.login("victim"))[0] == 200
    # nor is anyone else behind that NAT, even after 30 failures there on other names
    await guesser.me()
    attempts = [{"username": f"nobody{i}", "password": "x"} for i in range(30)]
    fails = await batches([guesser.req("POST", "/api/login", a) for a in attempts])
    assert {code for code, _ in fails} == {403}
    assert (await b.user("10.0.0.66").login("neighbour"))[0] == 200
    # a distributed guess (one failure from each of 25 addresses) trips the slower per-account
    # limit for unknown browsers, never for the owner's
    spread = [b.user(f"10.1.0.{i}") for i in range(25)]
    for s in spread:
        await s.me()
    fails = await batches(
        [s.req("POST", "/api/login", {"username": "victim", "password": "x"}) for s in spread]
    )
    assert {code for code, _ in fails} <= {403, 429}
    code, body = await b.user("10.2.0.1").login("victim")
    assert code == 429 and body["code"] == "rate_limited", body
    owner.ip = "10.2.0.2"
    assert (await owner.login("victim"))[0] == 200
    _, metrics = await owner.req("GET", "/metrics")
    assert 'sagews_logins_total{result="rate_limited"} 0' not in metrics.decode()


async def test_hostile_inputs_get_clear_errors(backend: Backend) -> None:
    u = await backend.new_user("fuzzer")
    anon = backend.user()
    await anon.me()
    # deeply nested JSON (RecursionError inside json) is a 400, not a 500
    deep = b"[" * 100_000 + b"]" * 100_000
    for path in ("/api/login", "/api/signup", "/api/workspaces"):
        code, body = await anon.req("POST", path, raw=deep)
        assert (code, body["code"]) == (400, "bad_json"), (path, body)
    # wrong types in every REST body
    ws = await make_ws(u)
    for method, path, body in (
        ("POST", "/api/login", {"username": {"a": 1}, "password": ["x"]}),
        ("POST", "/api/signup", {"username": 5, "password": None}),
        ("POST", "/api/workspaces", {"name": {}}),
        ("POST", f"/api/workspaces/{ws}/rename", {"name": [1]}),
        ("POST", f"/api/workspaces/{ws}/copy", {"name": 7}),
        ("POST", f"/api/workspaces/{ws}/share", {"username": [], "role": {}}),
        ("POST", f"/api/workspaces/{ws}/publish", {"path": 5}),
        ("POST", f"/api/workspaces/{ws}/unpublish", {"path": None}),
        ("POST", "/api/account", {"name": []}),
        ("POST", "/api/account", {"password": 1, "new_password": 2}),
    ):
        code, got = await (anon if "login" in path or "signup" in path else u).req(method, path, body)
        assert code == 400 and got["code"] == "bad_field", (path, body, got)
    # over SockJS: hello with versions [{}], non-string SockJS elements, wrong field types
    c = SockClient(u)
    await c.connect(hello=False)
    try:
        r = await c.request({"type": "hello", "versions": [{}], "xsrf": u.cookies["_xsrf"]})
        assert r["code"] == "bad_field", r
        await c.request({"type": "hello", "versions": [1], "xsrf": u.cookies["_xsrf"]})
        assert c.ws is not None
        await c.ws.write_message(json.dumps([1, {"type": "ping"}, None, ["x"]]))
        for _ in range(4):
            assert (await c.recv())["code"] == "bad_message"
        await c.ws.write_message(json.dumps([json.dumps({"type": "ping", "id": 1, "x": [[[[[[]]]]]] * 10})]))
        assert (await c.recv())["type"] == "pong"
        await c.request({"type": "open", "workspace": ws})
        for msg in (
            {"type": "exec", "code": {"x": 1}},
            {"type": "exec", "code": "1", "engine": ["python"]},
            {"type": "write", "path": "a", "text": 5},
            {"type": "write", "path": ["a"], "text": "x"},
            {"type": "read", "path": "a", "commit": 12},
            {"type": "history", "limit": "10"},
            {"type": "history", "limit": True},
            {"type": "rename", "src": "a", "dst": {}},
            {"type": "share", "username": [], "role": "editor"},
            {"type": "publish", "path": {}},
            {"type": "save", "message": []},
        ):
            r = await c.request({**msg, "session": ws})
            assert (r["type"], r["code"]) == ("error", "bad_field"), (msg, r)
        r = await c.request({"type": "open", "workspace": {"$gt": ""}})
        assert r["code"] == "not_found"
        assert (await c.request({"type": "ping"}))["type"] == "pong"
    finally:
        await c.close()


async def _raw_http(port: int, head: bytes, body: bytes = b"", wait: float = 10) -> tuple[bytes, float]:
    """Send a request head (and maybe part of a body); the response and how long it took."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + body)
    try:
        data = await asyncio.wait_for(reader.read(65536), wait)
    finally:
        writer.close()
    return data, loop.time() - t0


async def test_large_bodies_are_refused_before_being_read(backend: Backend) -> None:
    huge = 99 << 20
    u = backend.user()
    await u.me()
    auth = f"Cookie: {u.cookie_header()}\r\nX-XSRFToken: {u.cookies['_xsrf']}\r\n"
    for path in ("/api/login", "/api/workspaces", "/api/no-such"):
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}"
            f"Content-Length: {huge}\r\n\r\n"
        ).encode()
        data, _ = await _raw_http(backend.port, head, b"{")  # one byte of 99 MiB sent: answered at once
        assert data.startswith((b"HTTP/1.1 413", b"HTTP/1.1 404")), data[:200]
    # a chunked body stops being read at the API limit (1 MiB)
    head = b"POST /api/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (256 << 10, b" " * (256 << 10))
    data, _ = await _raw_http(backend.port, head, chunk * 8)
    assert data == b"" or data.startswith(b"HTTP/1.1 4"), data[:200]
    # the SockJS endpoints take at most one max_message (twice, JSON-escaped) and refuse more unread
    head = f"POST /sockjs/000/abc/xhr_send HTTP/1.1\r\nHost: x\r\nContent-Length: {huge}\r\n\r\n".encode()
    data, _ = await _raw_http(backend.port, head)
    assert data == b"" or data.startswith(b"HTTP/1.1 4"), data[:200]
    _, metrics = await backend.user().req("GET", "/metrics")
    assert "sagews_bodies_refused_total 0" not in metrics.decode()


async def test_csp_on_every_response_and_no_cdn(backend: Backend) -> None:
    u = backend.user()
    resp = await u.http.fetch(backend.base + "/sockjs/iframe.html", raise_error=False)
    assert resp.code == 404 and b"cdn" not in resp.body.lower()
    for path in ("/sockjs/iframe.html", "/sockjs/info", "/sockjs/", "/api/me", "/nope", "/healthz",
                 "/metrics", "/sockjs/000/x/xhr_send"):  # fmt: skip
        resp = await u.http.fetch(backend.base + path, raise_error=False)
        csp = resp.headers.get("Content-Security-Policy", "")
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, (path, resp.headers)
        assert resp.headers.get("X-Content-Type-Options") == "nosniff", path
