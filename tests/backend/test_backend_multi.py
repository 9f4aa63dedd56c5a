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
