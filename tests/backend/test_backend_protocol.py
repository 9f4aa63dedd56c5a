"""The client protocol over real SockJS transports, against a real worker, PostgreSQL and memcached."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import zipfile

import pytest

from tests.backend.conftest import Backend
from tests.backend.helpers import HttpUser, SockClient, wait_until


async def make_ws(u: HttpUser, name: str = "ws") -> str:
    code, body = await u.req("POST", "/api/workspaces", {"name": name})
    assert code == 200, body
    return str(body["workspace"]["id"])


@pytest.mark.parametrize("transport", ["websocket", "xhr_streaming"])
async def test_journey(backend: Backend, transport: str) -> None:
    name = f"saver{secrets.token_hex(3)}"
    u = await backend.new_user(name)
    ws = await make_ws(u, "Journey ✓")
    c = await SockClient(u, transport).connect()
    try:
        opened = await c.request({"type": "open", "workspace": ws})
        assert opened["type"] == "opened" and opened["role"] == "owner", opened
        assert opened["session"] == ws
        r = await c.request({"type": "write", "session": ws, "path": "a.py", "text": "x = 'héllo ✓'\n"})
        assert r["type"] == "write", r
        frames = await c.frames(
            {"type": "exec", "session": ws, "code": "exec(open('a.py').read()); print(x); 6*7"}
        )
        assert frames[-1]["type"] == "done" and frames[-1]["status"] == "ok", frames
        assert any(f["type"] == "stream" and "héllo ✓" in f["text"] for f in frames)
        assert any(f["type"] == "result" and f["data"]["text/plain"] == "42" for f in frames)
        s1 = await c.request({"type": "save", "session": ws, "message": "first"})
        assert s1["type"] == "saved" and s1["seq"] == 0, s1
        await c.request({"type": "write", "session": ws, "path": "a.py", "text": "x = 2\n"})
        s2 = await c.request({"type": "save", "session": ws, "message": "second"})
        assert s2["seq"] == 1 and not s2["base"], s2
        hist = await c.request({"type": "history", "session": ws})
        assert [h["message"] for h in hist["commits"][:2]] == ["second", "first"]
        assert [h["author"] for h in hist["commits"][:2]] == [name, name]  # who saved
        old = await c.request({"type": "read", "session": ws, "path": "a.py", "commit": s1["commit"]})
        assert old["text"] == "x = 'héllo ✓'\n"
        same = await c.request({"type": "save", "session": ws})
        assert same.get("unchanged") is True
    finally:
        await c.close()
    m = (await u.req("GET", "/metrics"))[1].decode()
    assert "sagews_execute_seconds_count 1" in m


async def test_authorization(backend: Backend) -> None:
    owner = await backend.new_user("owner1")
    viewer = await backend.new_user("viewer1")
    stranger = await backend.new_user("stranger1")
    ws = await make_ws(owner)
    code, _ = await owner.req(
        "POST", f"/api/workspaces/{ws}/share", {"username": "viewer1", "role": "viewer"}
    )
    assert code == 200
    co = await SockClient(owner).connect()
    cv = await SockClient(viewer).connect()
    cs = await SockClient(stranger).connect()
    try:
        await co.request({"type": "open", "workspace": ws})
        await co.request({"type": "write", "session": ws, "path": "f.txt", "text": "secret"})
        # the stranger learns nothing and can do nothing
        r = await cs.request({"type": "open", "workspace": ws})
        assert (r["type"], r["code"]) == ("error", "not_found")
        for kind in ("read", "exec", "save"):
            r = await cs.request({"type": kind, "session": ws, "path": "f.txt", "code": "1"})
            assert r["code"] == "no_session", r
        assert (await stranger.req("GET", f"/api/workspaces/{ws}"))[0] == 404
        assert (await stranger.req("POST", f"/api/workspaces/{ws}/save", {}))[0] == 404
        # the viewer reads, but cannot run, save or write
        r = await cv.request({"type": "open", "workspace": ws})
        assert r["role"] == "viewer"
        assert (await cv.request({"type": "read", "session": ws, "path": "f.txt"}))["text"] == "secret"
        for msg in (
            {"type": "exec", "code": "1"},
            {"type": "save"},
            {"type": "write", "path": "f.txt", "text": "x"},
            {"type": "delete", "path": "f.txt"},
            {"type": "restart"},
        ):
            r = await cv.request({**msg, "session": ws})
            assert (r["type"], r["code"]) == ("error", "forbidden"), (msg, r)
        assert (await viewer.req("POST", f"/api/workspaces/{ws}/rename", {"name": "x"}))[0] == 403
        assert (await viewer.req("DELETE", f"/api/workspaces/{ws}"))[0] == 403
        # unsharing takes effect at once: the open connection is told and its next message refused
        await owner.req("POST", f"/api/workspaces/{ws}/share", {"username": "viewer1", "role": "none"})
        r = await cv.request({"type": "read", "session": ws, "path": "f.txt"})
        assert r["code"] == "no_session", r
        left = await cv.recv(5)
        assert (left["type"], left["session"], left["reason"]) == ("left", ws, "access revoked"), left
        assert (await cv.request({"type": "open", "workspace": ws}))["code"] == "not_found"
    finally:
        for c in (co, cv, cs):
            await c.close()


async def test_not_logged_in_is_closed_4001(backend: Backend) -> None:
    anon = backend.user()
    await anon.me()
    c = SockClient(anon)
    try:
        await c.connect(hello=False)
        m = await c.recv()
        assert m["type"] == "_closed" and m["close"][0] == 4001
    finally:
        await c.close()


async def test_bad_input(backend: Backend) -> None:
    u = await backend.new_user()
    ws = await make_ws(u)
    c = SockClient(u)
    await c.connect(hello=False)
    try:
        r = await c.request({"type": "open", "workspace": ws})
        assert r["code"] == "hello_required"
        r = await c.request({"type": "hello", "versions": [1], "xsrf": "forged"})
        assert r["code"] == "xsrf"
        r = await c.request({"type": "hello", "versions": [99], "xsrf": u.cookies["_xsrf"]})
        assert r["code"] == "bad_version"
        assert (await c.request({"type": "hello", "versions": [1], "xsrf": u.cookies["_xsrf"]}))[
            "type"
        ] == "hello"
        await c.send_raw("{not json")
        assert (await c.recv())["code"] == "bad_json"
        await c.send_raw("[1, 2]")
        assert (await c.recv())["code"] == "bad_message"
        for bad_id in (None, 2**60, True, "", "x" * 200, 1.5):
            await c.send_raw(json.dumps({"type": "ping", "id": bad_id}))
            m = await c.recv()
            assert m["code"] == "bad_message" and m["re"] is None, (bad_id, m)
        await c.send_raw(json.dumps({"type": "ping", "id": "x" * 128}))
        assert (await c.recv())["type"] == "pong"
        r = await c.request({"type": "no such thing ✓", "session": ws})
        assert r["code"] == "unknown_type"
        for wrong in ("00000000-0000-0000-0000-000000000000", "../../etc", 5, None, "ü" * 40):
            r = await c.request({"type": "open", "workspace": wrong})
            assert r["code"] == "not_found", (wrong, r)
        r = await c.request({"type": "read", "session": "not-open", "path": "x"})
        assert r["code"] == "no_session"
        await c.send_raw(
            json.dumps({"type": "ping", "id": 1, "pad": "x" * (backend.app.config.max_message + 10)})
        )
        assert (await c.recv())["code"] == "too_large"
        await c.request({"type": "open", "workspace": ws})
        r = await c.request({"type": "read", "session": ws, "path": "../../etc/passwd"})
        assert (r["type"], r["code"]) == ("error", "path_refused")
        r = await c.request({"type": "save", "session": ws, "message": 5})
        assert r["code"] == "bad_field"
        r = await c.request({"type": "read", "session": ws, "path": "nope.txt"})
        assert r["code"] == "not_found"
        # the connection is still usable after all that
        assert (await c.request({"type": "ping"}))["type"] == "pong"
    finally:
        await c.close()


async def test_presence_and_file_changed(backend: Backend) -> None:
    a = await backend.new_user("pa")
    b = await backend.new_user("pb")
    ws = await make_ws(a)
    await a.req("POST", f"/api/workspaces/{ws}/share", {"username": "pb", "role": "editor"})
    ca = await SockClient(a).connect()
    cb = await SockClient(b).connect()
    try:
        await ca.request({"type": "open", "workspace": ws})
        r = await cb.request({"type": "open", "workspace": ws})
        assert r["role"] == "editor" and r["presence"] == ["pa", "pb"]
        await cb.request({"type": "write", "session": ws, "path": "n.txt", "text": "hi"})

        async def note(kind: str) -> dict:
            while True:
                m = await ca.recv()
                if m["type"] == kind:
                    return m

        assert (await asyncio.wait_for(note("file_changed"), 10))["by"] == "pb"
        await cb.close()
        # presence is coalesced (presence_interval): the last list a client got converges to the truth
        await wait_until(lambda: ca.presence.get(ws) == ["pa"], 10, "presence without pb")
    finally:
        await ca.close()


async def test_concurrent_saves_lose_no_bundle(backend: Backend) -> None:
    u = await backend.new_user()
    ws = await make_ws(u)
    c = await SockClient(u).connect()
    try:
        await c.request({"type": "open", "workspace": ws})
        n = 6

        async def one(i: int) -> dict:
            await c.request({"type": "write", "session": ws, "path": f"f{i}.txt", "text": str(i)})
            return await c.request({"type": "save", "session": ws, "message": f"s{i}"})

        results = await asyncio.gather(*(one(i) for i in range(n)))
        seqs = sorted(r["seq"] for r in results if r["type"] == "saved" and not r.get("unchanged"))
        assert seqs == list(range(len(seqs))) and len(seqs) >= 1, results
        from sagews.backend.workspaces import db_bundle_count, db_chain

        assert await backend.app.db.run(db_bundle_count, ws) == len(seqs)
        assert len(await backend.app.db.run(db_chain, ws)) == len(seqs)
        # every file is in the stored history: a fresh open elsewhere restores all of them
        await backend.app.workspaces.close(ws)
        await c.request({"type": "open", "workspace": ws})
        ls = await c.request({"type": "ls", "session": ws})
        assert {f"f{i}.txt" for i in range(n)} <= {e["name"] for e in ls["entries"]}
    finally:
        await c.close()


async def test_workspace_rest(backend: Backend) -> None:
    u = await backend.new_user("rest1")
    ws = await make_ws(u, "one")
    assert (await u.req("POST", f"/api/workspaces/{ws}/rename", {"name": "two"}))[0] == 200
    _, body = await u.req("GET", f"/api/workspaces/{ws}")
    assert body["workspace"]["name"] == "two" and body["workspace"]["role"] == "owner"
    c = await SockClient(u).connect()
    try:
        await c.request({"type": "open", "workspace": ws})
        await c.request({"type": "write", "session": ws, "path": "first.txt", "text": "1"})
        assert (await c.request({"type": "save", "session": ws}))["seq"] == 0
        await c.request({"type": "write", "session": ws, "path": "p.sagews", "text": "published ✓"})
        # a notebook nbformat rejects is written (nothing lost) and the reply says why
        bad = await c.request({"type": "write", "session": ws, "path": "n.ipynb", "text": '{"cells": []}'})
        assert bad["type"] == "write" and "nbformat is None, not 4" in bad["warning"], bad
        good = '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'
        ok = await c.request({"type": "write", "session": ws, "path": "n.ipynb", "text": good})
        assert ok["type"] == "write" and "warning" not in ok, ok
        assert (await c.request({"type": "save", "session": ws}))["seq"] == 1
    finally:
        await c.close()
    code, zdata = await u.req("GET", f"/api/workspaces/{ws}/download?format=zip")
    assert code == 200, zdata
    with zipfile.ZipFile(io.BytesIO(zdata)) as z:
        assert z.read("p.sagews").decode() == "published ✓" and z.read("first.txt") == b"1"
    code, bdata = await u.req("GET", f"/api/workspaces/{ws}/download?format=bundle")
    assert code == 200 and bdata[:15] in (b"# v2 git bundle", b"# v3 git bundle")
    assert (await u.req("GET", f"/api/workspaces/{ws}/download?format=exe"))[0] == 400
    code, body = await u.req("POST", f"/api/workspaces/{ws}/publish", {"path": "p.sagews"})
    assert code == 200, body
    anon = backend.user()
    code, pub = await anon.req("GET", body["url"] + "/raw")
    assert code == 200 and pub["text"] == "published ✓" and pub["workspace"] == "two"
    # the whole workspace as a site (its last save): the file list, and each file by ?path=
    code, site = await u.req("POST", f"/api/workspaces/{ws}/publish", {"path": "/", "folder": True})
    assert code == 200 and site["url"] != body["url"], site
    code, top = await anon.req("GET", site["url"] + "/raw")
    assert code == 200 and top["path"] == "/", top
    assert {f["path"] for f in top["site"]["files"]} == {"first.txt", "p.sagews", "n.ipynb"}
    code, one = await anon.req("GET", site["url"] + "/raw?path=p.sagews")
    assert code == 200 and one["text"] == "published ✓" and one["site_path"] == "/", one
    assert (await anon.req("GET", site["url"] + "/raw?path=nope.txt"))[0] == 404
    _, listed = await u.req("GET", f"/api/workspaces/{ws}/published")
    assert {p["path"] for p in listed["published"]} == {"p.sagews", "/"}
    code, copy = await u.req("POST", f"/api/workspaces/{ws}/copy", {"name": "three"})
    assert code == 200, copy
    _, lst = await u.req("GET", "/api/workspaces")
    assert {w["name"] for w in lst["workspaces"]} == {"two", "three"}
    assert (await u.req("DELETE", f"/api/workspaces/{ws}"))[0] == 200
    _, lst = await u.req("GET", "/api/workspaces")
    assert [w["name"] for w in lst["workspaces"]] == ["three"]
    assert (await anon.req("GET", body["url"] + "/raw"))[0] == 404


async def test_interrupt_and_restart(backend: Backend) -> None:
    u = await backend.new_user()
    ws = await make_ws(u)
    c = await SockClient(u).connect()
    try:
        await c.request({"type": "open", "workspace": ws})
        await c.frames({"type": "exec", "session": ws, "code": "kept = 1"})
        code = "import time\nprint('started', flush=True)\nwhile True: time.sleep(0.05)"
        rid = "long-run"
        q: asyncio.Queue[dict] = asyncio.Queue()
        c.waiters[rid] = q
        await c.send({"type": "exec", "id": rid, "session": ws, "code": code})
        first = await asyncio.wait_for(q.get(), 30)  # the loop is running once it printed
        assert first["type"] == "stream" and "started" in first["text"], first
        assert (await c.request({"type": "interrupt", "session": ws}))["type"] == "ok"
        while (last := await asyncio.wait_for(q.get(), 30))["type"] != "done":
            pass
        assert last["status"] == "interrupted", last
        r = await c.frames({"type": "exec", "session": ws, "code": "kept"})
        assert any(f["type"] == "result" for f in r)  # state survives an interrupt
        assert (await c.request({"type": "restart", "session": ws}))["type"] == "ok"
        r = await c.frames({"type": "exec", "session": ws, "code": "kept"})
        assert r[-1]["status"] == "error" and any(f.get("ename") == "NameError" for f in r)
    finally:
        await c.close()


async def test_heartbeats_come_from_one_timer(backend: Backend) -> None:
    """SockJS heartbeats ("h") of every websocket session come from the backend's one HeartbeatWheel
    (no timer per session: heartbeats.py explains the GC stall those caused); a closed session leaves
    it. (sockjs-tornado starts no heartbeats for xhr-streaming sessions, which end after 128 KB.)"""
    wheel = backend.app.heartbeats
    wheel.interval = 0.2
    u = await backend.new_user()
    c = await SockClient(u).connect()
    try:
        await wait_until(lambda: c.heartbeats >= 2, 10, "two heartbeats")
        assert len(wheel.due) == 1
        assert all(s._heartbeat_timer is None for s in wheel.due)  # sockjs-tornado's own timer unused
    finally:
        await c.close()
    await wait_until(lambda: not wheel.due, 15, "the closed session leaves the wheel")
