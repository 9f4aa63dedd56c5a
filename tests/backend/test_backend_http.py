"""HTTP surface: accounts, sessions, CSRF, rate limits, JSON errors, health and metrics."""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine, text

from tests.backend.conftest import Backend


async def test_signup_login_logout_and_session_revocation(backend: Backend, pg_url: str) -> None:
    u = backend.user()
    assert (await u.me())["user"] is None
    assert "_xsrf" in u.cookies
    code, body = await u.signup("Alice")
    assert code == 200 and body["user"]["name"] == "Alice"
    token = u.cookies["sagews_session"]
    # server-side: only the hash of the token is stored; the password hash is argon2id
    eng = create_engine(pg_url)
    with eng.connect() as c:
        hashes = [r[0] for r in c.execute(text("SELECT token_hash FROM sessions"))]
        pw = c.execute(text("SELECT password_hash FROM accounts")).scalar()
    eng.dispose()
    assert token not in hashes and len(hashes) == 1 and len(hashes[0]) == 64
    assert str(pw).startswith("$argon2id$")
    assert (await u.me())["user"]["name"] == "Alice"
    assert (await u.req("POST", "/api/logout"))[0] == 200
    # the old token no longer works, even replayed (revoked server-side, cache entry dropped)
    replay = backend.user()
    replay.cookies = {"sagews_session": token}
    assert (await replay.me())["user"] is None
    code, body = await u.login("alice")  # user names are case-insensitive
    assert code == 200, body


async def test_cookie_flags(backend: Backend) -> None:
    u = backend.user()
    await u.me()
    resp = await u.http.fetch(
        backend.base + "/api/signup",
        method="POST",
        body=b'{"username": "flags", "password": "long enough pw"}',
        headers={"Cookie": u.cookie_header(), "X-XSRFToken": u.cookies["_xsrf"]},
    )
    cookie = next(h for h in resp.headers.get_list("Set-Cookie") if h.startswith("sagews_session="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


async def test_csrf_required(backend: Backend) -> None:
    u = backend.user()
    await u.me()
    code, body = await u.req("POST", "/api/signup", {"username": "x1", "password": "12345678"}, xsrf=False)
    assert code == 403 and body["code"] == "xsrf"


async def test_json_errors(backend: Backend) -> None:
    u = await backend.new_user()
    cases: list[tuple[Any, ...]] = [
        ("POST", "/api/workspaces", None, b"{not json", 400, "bad_json"),
        ("POST", "/api/workspaces", None, b"[1]", 400, "bad_json"),
        ("POST", "/api/workspaces", {"name": 5}, None, 400, "bad_field"),
        ("POST", "/api/workspaces", {"name": "x" * 500}, None, 400, "bad_field"),
        ("GET", "/api/workspaces/not-a-uuid", None, None, 404, "not_found"),
        ("GET", "/api/workspaces/00000000-0000-0000-0000-000000000000", None, None, 404, "not_found"),
        ("GET", "/api/no/such/thing", None, None, 404, "not_found"),
        ("POST", "/api/no-such", {}, None, 404, "not_found"),
    ]
    for method, path, body, raw, status, code in cases:
        got_status, got = await u.req(method, path, body, raw=raw)
        assert (got_status, got["code"]) == (status, code), (path, got)
    anon = backend.user()
    await anon.me()
    code, body = await anon.req("GET", "/api/workspaces")
    assert code == 401 and body["code"] == "login"
    code, body = await u.req("POST", "/api/signup", {"username": "bad name!", "password": "12345678"})
    assert code == 400 and body["code"] == "bad_field"


async def test_account_settings_password_change_revokes_sessions(backend: Backend) -> None:
    a = await backend.new_user("bob")
    other = backend.user()
    assert (await other.login("bob"))[0] == 200
    code, body = await a.req("POST", "/api/account", {"password": "wrong", "new_password": "new password 1"})
    assert code == 403
    code, body = await a.req(
        "POST", "/api/account", {"password": "correct horse battery", "new_password": "new password 1"}
    )
    assert code == 200, body
    assert (await other.me())["user"] is None  # the other browser's session was revoked
    assert (await a.me())["user"]["name"] == "bob"  # this one got a fresh session
    assert (await backend.user().login("bob", "new password 1"))[0] == 200


async def test_healthz_and_metrics(backend: Backend) -> None:
    u = backend.user()
    code, body = await u.req("GET", "/healthz")
    assert code == 200 and body == b"ok\n"
    code, body = await u.req("GET", "/metrics")
    text_ = body.decode()
    for name in (
        "sagews_sockjs_sessions",
        "sagews_execute_seconds_bucket",
        "sagews_db_pool_checked_out",
        "sagews_cache_hit_ratio",
        "sagews_workers_healthy 1",
        "sagews_cache_up 1",
    ):
        assert name in text_, name


async def test_admin_role(backend: Backend) -> None:
    from sagews.backend import accounts

    await backend.app.db.run(accounts.create_account, "boss", accounts.hash_password("boss password"), True)
    boss = backend.user()
    assert (await boss.login("boss", "boss password"))[0] == 200
    plain = await backend.new_user()
    assert (await plain.req("GET", "/api/admin/workers"))[0] == 403
    code, body = await boss.req("GET", "/api/admin/workers")
    assert code == 200 and body["workers"][0]["healthy_here"] is True
    wid = body["workers"][0]["id"]
    assert (await plain.req("POST", f"/api/admin/workers/{wid}/drain", {"draining": True}))[0] == 403
    assert (await boss.req("POST", f"/api/admin/workers/{wid}/drain", {"draining": True}))[0] == 200
    assert backend.app.pool.pick() is None  # the only worker is draining: no new placements
    code, body = await plain.req("POST", "/api/workspaces", {"name": "x"})
    u_ws = body["workspace"]["id"]
    from tests.backend.helpers import SockClient

    c = await SockClient(plain).connect()
    try:
        assert (await c.request({"type": "open", "workspace": u_ws}))["code"] == "no_worker"
    finally:
        await c.close()
    assert (await boss.req("POST", f"/api/admin/workers/{wid}/drain", {"draining": False}))[0] == 200
    code, body = await boss.req("GET", "/api/admin/workspaces")
    assert code == 200 and u_ws in {w["id"] for w in body["workspaces"]}


async def test_tls_required_off_loopback_and_served(
    backend_config: Any, start_backend: Any, sqlite_url: str, pki: Any
) -> None:
    import ssl

    import pytest
    import tornado.httpclient

    from sagews.backend.app import BackendApp

    cfg = backend_config(sqlite_url, host="0.0.0.0")  # noqa: S104 (never bound: refused before listening)
    app = BackendApp(cfg)
    try:
        from sagews.backend.app import ssl_context

        with pytest.raises(ValueError, match="TLS"):
            ssl_context(cfg)
    finally:
        await app.stop()
    pair = pki.issue("backend-web")
    b = await start_backend(backend_config(sqlite_url, tls_cert=str(pair.cert), tls_key=str(pair.key)))
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert_path))
    resp = await tornado.httpclient.AsyncHTTPClient().fetch(
        f"https://127.0.0.1:{b.port}/healthz", ssl_options=ctx, raise_error=False
    )
    assert resp.code == 200 and resp.body == b"ok\n"


async def test_metrics_only_for_monitoring_networks(backend: Backend) -> None:
    u = backend.user()
    assert (await u.req("GET", "/metrics"))[0] == 200
    backend.app.config.metrics_networks = ["10.0.0.0/8"]
    assert (await u.req("GET", "/metrics"))[0] == 403
