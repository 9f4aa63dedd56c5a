"""Two backends on one database: a reconnecting client resumes on the other; management over SockJS."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.backend.conftest import Backend, Memcached
from tests.backend.helpers import HttpUser, SockClient
from tests.backend.test_backend_protocol import make_ws


async def test_resume_on_another_backend(
    backend_config: Callable[..., Any], start_backend: Any, pg_url: str, memcached: Memcached
) -> None:
    a: Backend = await start_backend(backend_config(pg_url, memcached=[memcached.address]))
    b: Backend = await start_backend(backend_config(pg_url, memcached=[memcached.address]))
    u = await a.new_user("roamer")
    ws = await make_ws(u)
    c = await SockClient(u).connect()
    try:
        await c.request({"type": "open", "workspace": ws})
        assert (await c.frames({"type": "exec", "session": ws, "code": "state = 41"}))[-1]["status"] == "ok"
    finally:
        await c.close()
    # same cookies, other backend (as after HAProxy sent the reconnect elsewhere)
    u2 = HttpUser(b.base)
    u2.cookies = dict(u.cookies)
    assert (await u2.me())["user"]["name"] == "roamer"
    c2 = await SockClient(u2).connect()
    try:
        r = await c2.request({"type": "open", "workspace": ws})
        assert r["role"] == "owner"
        frames = await c2.frames({"type": "exec", "session": ws, "code": "state + 1"})
        assert any(f["type"] == "result" and f["data"]["text/plain"] == "42" for f in frames), frames
    finally:
        await c2.close()


async def test_share_publish_members_over_sockjs(backend: Backend) -> None:
    owner = await backend.new_user("sowner")
    ed = await backend.new_user("seditor")
    ws = await make_ws(owner)
    co = await SockClient(owner).connect()
    ce = await SockClient(ed).connect()
    try:
        await co.request({"type": "open", "workspace": ws})
        r = await co.request({"type": "share", "session": ws, "username": "seditor", "role": "editor"})
        assert r["type"] == "ok", r
        r = await co.request({"type": "share", "session": ws, "username": "nobody", "role": "editor"})
        assert r["code"] == "no_user"
        r = await co.request({"type": "share", "session": ws, "username": "seditor", "role": "admin"})
        assert r["code"] == "bad_field"
        assert (await ce.request({"type": "open", "workspace": ws}))["role"] == "editor"
        r = await ce.request({"type": "share", "session": ws, "username": "sowner", "role": "viewer"})
        assert r["code"] == "forbidden"
        members = (await ce.request({"type": "members", "session": ws}))["members"]
        assert {(m["name"], m["role"]) for m in members} == {("sowner", "owner"), ("seditor", "editor")}
        await ce.request({"type": "write", "session": ws, "path": "pub.txt", "text": "hello world"})
        r = await ce.request({"type": "publish", "session": ws, "path": "pub.txt"})
        assert r["type"] == "published", r
        code, pub = await backend.user().req("GET", r["url"] + "/raw")
        assert code == 200 and pub["text"] == "hello world"
        assert (await ce.request({"type": "unpublish", "session": ws, "path": "pub.txt"}))["type"] == "ok"
        assert (await backend.user().req("GET", r["url"] + "/raw"))[0] == 404
    finally:
        await co.close()
        await ce.close()


async def test_presence_and_file_changed_across_backends(
    backend_config: Callable[..., Any], start_backend: Any, pg_url: str, memcached: Memcached
) -> None:
    from tests.backend.helpers import wait_until

    a: Backend = await start_backend(backend_config(pg_url, memcached=[memcached.address]))
    b: Backend = await start_backend(backend_config(pg_url, memcached=[memcached.address]))
    await wait_until(lambda: a.app.events.connected and b.app.events.connected, what="LISTEN connections")
    ua = await a.new_user("xa")
    ub = HttpUser(b.base)
    assert (await ub.signup("xb"))[0] == 200
    ws = await make_ws(ua)
    await ua.req("POST", f"/api/workspaces/{ws}/share", {"username": "xb", "role": "editor"})
    ca = await SockClient(ua).connect()
    cb = await SockClient(ub).connect()
    try:
        await ca.request({"type": "open", "workspace": ws})
        await cb.request({"type": "open", "workspace": ws})

        async def next_of(c: SockClient, kind: str, pred: Callable[[dict], bool]) -> dict:
            while True:
                m = await c.recv(20)
                if m["type"] == kind and pred(m):
                    return m

        # a's client learns about b's user although b is connected to the other backend
        await wait_until(lambda: ca.presence.get(ws) == ["xa", "xb"], 20, "xb in presence")
        await cb.request({"type": "write", "session": ws, "path": "shared.txt", "text": "from b"})
        m = await next_of(ca, "file_changed", lambda m: m["path"] == "shared.txt")
        assert m["by"] == "xb"
        await cb.close()
        await wait_until(lambda: ca.presence.get(ws) == ["xa"], 20, "xb gone from presence")
    finally:
        await ca.close()
        await cb.close()


async def test_login_limits_are_shared_by_backends(
    backend_config: Callable[..., Any], start_backend: Any, pg_url: str, memcached: Memcached
) -> None:
    cfg = {"memcached": [memcached.address], "login_backoff_seconds": 60.0}
    a: Backend = await start_backend(backend_config(pg_url, **cfg))
    b: Backend = await start_backend(backend_config(pg_url, **cfg))
    await a.new_user("target")
    limit = a.app.config.login_free_attempts + 1  # the first failure beyond the free ones blocks
    for i in range(limit):
        attacker = (a if i % 2 else b).user()
        code, _ = await attacker.login("target", "wrong password")
        assert code == 403
    # neither backend alone saw `limit` failures, together they did
    code, body = await a.user().login("target")
    assert code == 429 and body["code"] == "rate_limited"
    code, body = await b.user().login("target")
    assert code == 429


async def test_logout_closes_live_connections_on_every_backend(
    backend_config: Callable[..., Any], start_backend: Any, pg_url: str, memcached: Memcached
) -> None:
    from tests.backend.helpers import wait_until

    a: Backend = await start_backend(backend_config(pg_url, memcached=[memcached.address]))
    b: Backend = await start_backend(backend_config(pg_url, memcached=[memcached.address]))
    await wait_until(lambda: a.app.events.connected and b.app.events.connected, what="LISTEN connections")
    u = await a.new_user("leaver")
    ub = HttpUser(b.base)
    ub.cookies = dict(u.cookies)
    ca = await SockClient(u).connect()
    cb = await SockClient(ub).connect()
    try:
        assert (await u.req("POST", "/api/logout"))[0] == 200
        for c in (ca, cb):
            while (m := await c.recv(20))["type"] != "_closed":
                pass
            assert m["close"][0] == 4001
    finally:
        await ca.close()
        await cb.close()


async def test_concurrent_saves_from_two_backends_lose_nothing(
    backend_config: Callable[..., Any], start_backend: Any, pg_url: str, memcached: Memcached
) -> None:
    import asyncio

    a: Backend = await start_backend(backend_config(pg_url, memcached=[memcached.address]))
    b: Backend = await start_backend(backend_config(pg_url, memcached=[memcached.address]))
    u = await a.new_user("saver")
    ub = HttpUser(b.base)
    ub.cookies = dict(u.cookies)
    ws = await make_ws(u)
    ca = await SockClient(u).connect()
    cb = await SockClient(ub).connect()
    try:
        await ca.request({"type": "open", "workspace": ws})
        await cb.request({"type": "open", "workspace": ws})

        async def one(c: SockClient, i: int) -> dict:
            await c.request({"type": "write", "session": ws, "path": f"g{i}.txt", "text": str(i)})
            return await c.request({"type": "save", "session": ws, "message": f"s{i}"})

        results = await asyncio.gather(*(one(ca if i % 2 else cb, i) for i in range(8)))
        assert all(r["type"] == "saved" for r in results), results
        seqs = sorted(r["seq"] for r in results if not r.get("unchanged"))
        assert seqs == list(range(len(seqs))), seqs
        _, body = await u.req("POST", f"/api/workspaces/{ws}/copy", {"name": "check"})
        cp = body["workspace"]["id"]
        await ca.request({"type": "open", "workspace": cp})
        ls = await ca.request({"type": "ls", "session": cp})
        assert {f"g{i}.txt" for i in range(8)} <= {e["name"] for e in ls["entries"]}, ls
    finally:
        await ca.close()
        await cb.close()


async def test_revocation_reaches_live_connections_on_every_backend(
    backend_config: Callable[..., Any], start_backend: Any, pg_url: str, memcached: Memcached
) -> None:
    """The role lives in the connection (no DB on the hot path); share changes and deletion reach
    connections on the other backend through NOTIFY at COMMIT, so a revoked member loses access."""
    from tests.backend.helpers import wait_until

    a: Backend = await start_backend(backend_config(pg_url, memcached=[memcached.address]))
    b: Backend = await start_backend(backend_config(pg_url, memcached=[memcached.address]))
    await wait_until(lambda: a.app.events.connected and b.app.events.connected, what="LISTEN connections")
    owner = await a.new_user("rowner")
    member = HttpUser(b.base)
    assert (await member.signup("rmember"))[0] == 200
    ws = await make_ws(owner)
    await owner.req("POST", f"/api/workspaces/{ws}/share", {"username": "rmember", "role": "editor"})
    cm = await SockClient(member).connect()  # on backend b
    try:
        assert (await cm.request({"type": "open", "workspace": ws}))["role"] == "editor"
        assert (await cm.request({"type": "write", "session": ws, "path": "x", "text": "1"}))[
            "type"
        ] == "write"
        # editor -> viewer on backend a: b's connection is read-only from the next request on
        await owner.req("POST", f"/api/workspaces/{ws}/share", {"username": "rmember", "role": "viewer"})
        conn = next(c for c in b.app.live if c.user is not None and c.user.name == "rmember")
        await wait_until(lambda: conn.workspaces.get(ws) == "viewer", 5, "role change on backend b")
        r = await cm.request({"type": "write", "session": ws, "path": "x", "text": "2"})
        assert r["code"] == "forbidden", r
        assert (await cm.request({"type": "read", "session": ws, "path": "x"}))["text"] == "1"
        # unshare on backend a: b's connection leaves the workspace
        await owner.req("POST", f"/api/workspaces/{ws}/share", {"username": "rmember", "role": "none"})
        left = await cm.recv(5)
        assert (left["type"], left["reason"]) == ("left", "access revoked"), left
        assert (await cm.request({"type": "read", "session": ws, "path": "x"}))["code"] == "no_session"
        # deletion by the owner (CLI or API, any backend) ends it for everyone
        await owner.req("POST", f"/api/workspaces/{ws}/share", {"username": "rmember", "role": "editor"})
        assert (await cm.request({"type": "open", "workspace": ws}))["role"] == "editor"
        assert (await owner.req("DELETE", f"/api/workspaces/{ws}"))[0] == 200
        left = await cm.recv(5)
        assert (left["type"], left["reason"]) == ("left", "workspace deleted"), left
    finally:
        await cm.close()


async def test_hot_path_touches_neither_db_nor_cache(backend: Backend) -> None:
    """exec, read, write, ls from an open, authorised connection: no DB call, no memcached call."""
    u = await backend.new_user("hotpath")
    ws = await make_ws(u)
    c = await SockClient(u).connect()
    app = backend.app
    calls: dict[str, list[str]] = {"db": [], "cache": []}
    background = {"_record", "list_workers"}  # the worker heartbeat (every 0.5 s here), not the requests
    real_run, client = app.db.run, app.cache._client
    assert client is not None
    real_call = client._call

    async def counted_run(fn: Any, *a: Any, **k: Any) -> Any:
        if fn.__name__ not in background:
            calls["db"].append(fn.__name__)
        return await real_run(fn, *a, **k)

    async def counted_call(key: bytes, *a: Any, **k: Any) -> Any:
        calls["cache"].append(key.decode())
        return await real_call(key, *a, **k)

    try:
        await c.request({"type": "open", "workspace": ws})
        await c.frames({"type": "exec", "session": ws, "code": "1+1"})
        app.db.run = counted_run  # type: ignore[method-assign]
        client._call = counted_call  # type: ignore[method-assign]
        for i in range(20):
            assert (await c.frames({"type": "exec", "session": ws, "code": f"{i}+1"}))[-1]["status"] == "ok"
            await c.request({"type": "write", "session": ws, "path": f"f{i}", "text": "x"})
            await c.request({"type": "read", "session": ws, "path": f"f{i}"})
            await c.request({"type": "ls", "session": ws})
        assert calls == {"db": [], "cache": []}, calls
    finally:
        app.db.run = real_run  # type: ignore[method-assign]
        client._call = real_call  # type: ignore[method-assign]
        await c.close()
