"""memcached down, a worker killed mid-session, SQLite instead of PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sagews.backend.config import WorkerEndpoint
from tests.backend.conftest import Backend, Memcached
from tests.backend.helpers import SockClient, WorkerProc, wait_until
from tests.backend.test_backend_protocol import make_ws


async def test_memcached_down_backend_keeps_working(
    backend_config: Callable[..., Any], start_backend: Any, pg_url: str
) -> None:
    mc = Memcached()
    try:
        b: Backend = await start_backend(backend_config(pg_url, memcached=[mc.address]))
        u = await b.new_user("cachy")
        ws = await make_ws(u)
        assert (await u.me())["user"]["name"] == "cachy"
        assert b.app.cache.hits >= 1  # the session lookup came from memcached
        assert "sagews_cache_up 1" in (await u.req("GET", "/metrics"))[1].decode()
    finally:
        mc.stop()
    b.app.cache._last_probe = 0  # do not wait for the 2 s probe cache
    assert (await u.me())["user"]["name"] == "cachy"
    c = await SockClient(u).connect()
    try:
        await c.request({"type": "open", "workspace": ws})
        frames = await c.frames({"type": "exec", "session": ws, "code": "1+1"})
        assert frames[-1]["status"] == "ok"
        assert (await c.request({"type": "write", "session": ws, "path": "x", "text": "y"}))[
            "type"
        ] == "write"
        assert (await c.request({"type": "save", "session": ws}))["type"] == "saved"
    finally:
        await c.close()
    _, metrics = await u.req("GET", "/metrics")
    assert "sagews_cache_up 0" in metrics.decode()
    code, _ = await u.req("POST", f"/api/workspaces/{ws}/rename", {"name": "renamed without cache"})
    assert code == 200
    assert (await u.req("GET", f"/api/workspaces/{ws}"))[1]["workspace"]["name"] == "renamed without cache"


async def test_worker_killed_reopens_elsewhere_from_last_save(
    backend_config: Callable[..., Any],
    start_backend: Any,
    pg_url: str,
    make_worker: Callable[[], WorkerProc],
) -> None:
    w1, w2 = make_worker(), make_worker()
    cfg = backend_config(pg_url)
    cfg.workers = [WorkerEndpoint("127.0.0.1", w1.port), WorkerEndpoint("127.0.0.1", w2.port)]
    b: Backend = await start_backend(cfg)
    await wait_until(lambda: len(b.app.pool.healthy()) == 2, what="workers healthy")
    u = await b.new_user()
    ws = await make_ws(u)
    c = await SockClient(u).connect()
    try:
        ports = {link.port: link for link in b.app.pool.links.values()}
        await c.request({"type": "open", "workspace": ws})
        await c.request({"type": "write", "session": ws, "path": "kept.txt", "text": "saved"})
        assert (await c.request({"type": "save", "session": ws}))["type"] == "saved"
        await c.request({"type": "write", "session": ws, "path": "lost.txt", "text": "unsaved"})
        first = b.app.workspaces.open[ws].link
        victim = w1 if first.port == w1.port else w2
        victim.kill()
        await wait_until(lambda: not ports[victim.port].healthy, what="dead worker noticed")
        r = await c.request({"type": "read", "session": ws, "path": "kept.txt"})
        assert r.get("text") == "saved", r
        assert b.app.workspaces.open[ws].link.port != victim.port
        r = await c.request({"type": "read", "session": ws, "path": "lost.txt"})
        assert r["code"] == "not_found"
        frames = await c.frames({"type": "exec", "session": ws, "code": "open('kept.txt').read()"})
        assert frames[-1]["status"] == "ok"
        assert "sagews_workers_healthy" in (await u.req("GET", "/metrics"))[1].decode()
    finally:
        await c.close()
        w1.stop()
        w2.stop()


async def test_sqlite_backend(
    backend_config: Callable[..., Any], start_backend: Any, sqlite_url: str
) -> None:
    b: Backend = await start_backend(backend_config(sqlite_url))
    u = await b.new_user("lite")
    ws = await make_ws(u)
    c = await SockClient(u, "xhr_streaming").connect()
    try:
        await c.request({"type": "open", "workspace": ws})
        await c.request({"type": "write", "session": ws, "path": "a.txt", "text": "ü"})
        s = await c.request({"type": "save", "session": ws})
        assert s["type"] == "saved" and s["seq"] == 0
    finally:
        await c.close()
    assert (await u.req("GET", "/healthz"))[0] == 200
    assert "sagews_cache_up 0" in (await u.req("GET", "/metrics"))[1].decode()  # no memcached configured


async def test_long_chains_are_repacked(
    backend_config: Callable[..., Any], start_backend: Any, pg_url: str
) -> None:
    from sagews.backend.workspaces import db_chain_length

    b: Backend = await start_backend(backend_config(pg_url, repack_after=3))
    u = await b.new_user()
    ws = await make_ws(u)
    c = await SockClient(u).connect()
    try:
        await c.request({"type": "open", "workspace": ws})
        for i in range(6):
            await c.request({"type": "write", "session": ws, "path": f"f{i}.txt", "text": str(i)})
            assert (await c.request({"type": "save", "session": ws}))["type"] == "saved"
        length, _ = await b.app.db.run(db_chain_length, ws)
        assert length <= 3, length
        # a copy has only the stored bundles: opening it restores from the repacked chain
        code, body = await u.req("POST", f"/api/workspaces/{ws}/copy", {"name": "copy"})
        assert code == 200, body
        cp = body["workspace"]["id"]
        await c.request({"type": "open", "workspace": cp})
        ls = await c.request({"type": "ls", "session": cp})
        assert {f"f{i}.txt" for i in range(6)} <= {e["name"] for e in ls["entries"]}, ls
        hist = await c.request({"type": "history", "session": cp})
        assert len(hist["commits"]) == 6
    finally:
        await c.close()


async def test_placement_is_compare_and_set(backend: Backend) -> None:
    """Two backends placing a closed workspace at once: the second follows the first's choice."""
    from sagews.backend.workspaces import db_claim, db_meta

    u = await backend.new_user()
    ws = await make_ws(u)
    db = backend.app.db
    wid = next(iter(backend.app.pool.links))
    assert await db.run(db_claim, ws, None, wid) == wid  # first claim wins
    assert await db.run(db_claim, ws, None, 999999) == wid  # a stale claimer learns the placement
    assert (await db.run(db_meta, ws))["worker_id"] == wid
    # a backend whose cached metadata is stale still ends up on the placed worker
    await backend.app.cache.set(f"ws:{ws}", {**(await db.run(db_meta, ws)), "worker_id": None})
    c = await SockClient(u).connect()
    try:
        assert (await c.request({"type": "open", "workspace": ws}))["type"] == "opened"
        assert backend.app.workspaces.open[ws].link.id == wid
    finally:
        await c.close()


async def test_database_down_gives_503_then_recovers(backend: Backend, postgres: Any) -> None:
    u = await backend.new_user("dbdown")
    ws = await make_ws(u)
    c = await SockClient(u).connect()
    try:
        await c.request({"type": "open", "workspace": ws})
        await backend.app.cache.delete(f"ws:{ws}")  # force DB reads
        postgres.stop()
        backend.app.last_db_ok = 0
        # liveness stays up (HAProxy keeps routing to this backend, which answers db_unavailable) ...
        assert await u.req("GET", "/healthz") == (200, b"ok\n")
        # ... while readiness tells the operator what is wrong
        code, body = await u.req("GET", "/readyz")
        assert code == 503 and b"database" in body
        code, body = await u.req("GET", "/api/workspaces")
        assert code == 503 and body["code"] == "db_unavailable"
        # an open, authorised connection needs no DB (its role and placement live in the backend)
        r = await c.request({"type": "read", "session": ws, "path": "x"})
        assert r["code"] == "not_found", r  # the worker's answer: no such file
        r = await c.request({"type": "open", "workspace": ws})  # opening looks the role up again
        assert r["code"] == "db_unavailable", r
    finally:
        if not postgres.is_running():
            postgres.start()
    assert (await u.req("GET", "/api/workspaces"))[0] == 200  # pool_pre_ping: no stale connection errors
    backend.app.last_db_ok = 0
    assert await u.req("GET", "/readyz") == (200, b"ready\n")
    assert (await c.request({"type": "read", "session": ws, "path": "x"}))["code"] == "not_found"
    await c.close()
