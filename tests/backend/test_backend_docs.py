# ruff: noqa: ASYNC109
"""Shared text documents through the backend (real SockJS, a real worker, PostgreSQL, memcached): two
editors on two backends converge through the worker's one authority; a viewer follows the document but
a forged ``doc_update`` (or cursor) from a viewer is refused by the backend and changes nothing; a save
names both editors (author + Co-authored-by)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import Any

from pycrdt import Doc, Text

from tests.backend.conftest import Backend, Memcached
from tests.backend.helpers import HttpUser, SockClient, wait_until
from tests.backend.test_backend_protocol import make_ws


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Replica:
    def __init__(self, c: SockClient, ws: str, path: str) -> None:
        self.c, self.ws, self.path = c, ws, path
        self.doc = Doc()
        self.text = self.doc.get("text", type=Text)

    async def open(self) -> dict[str, Any]:
        r = await self.c.request({"type": "doc_open", "session": self.ws, "path": self.path})
        assert r["type"] == "doc_opened", r
        self.doc.apply_update(base64.b64decode(r["update"]))
        return r

    async def edit(self, index: int, s: str) -> dict[str, Any]:
        before = self.doc.get_state()
        self.text.insert(index, s)
        return await self.c.request(
            {"type": "doc_update", "session": self.ws, "path": self.path,
             "update": b64(self.doc.get_update(before))}
        )  # fmt: skip

    async def pump(self, until: Callable[[], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"not converged: {str(self.text)!r}")
            try:
                m = await self.c.recv(left)
            except TimeoutError:
                continue
            if m.get("type") == "doc_update" and m.get("path") == self.path:
                assert m["session"] == self.ws
                self.doc.apply_update(base64.b64decode(m["update"]))


async def test_editors_on_two_backends_converge_viewer_refused(
    backend_config: Callable[..., Any], start_backend: Any, pg_url: str, memcached: Memcached
) -> None:
    a: Backend = await start_backend(backend_config(pg_url, memcached=[memcached.address]))
    b: Backend = await start_backend(backend_config(pg_url, memcached=[memcached.address]))
    owner = await a.new_user("docowner")
    editor = HttpUser(b.base)
    assert (await editor.signup("doceditor"))[0] == 200
    viewer = await a.new_user("docviewer")
    ws = await make_ws(owner, "shared doc")
    for name, role in (("doceditor", "editor"), ("docviewer", "viewer")):
        await owner.req("POST", f"/api/workspaces/{ws}/share", {"username": name, "role": role})
    co = await SockClient(owner).connect()
    ce = await SockClient(editor).connect()
    cv = await SockClient(viewer).connect()
    try:
        for c in (co, ce, cv):
            await c.request({"type": "open", "workspace": ws})
        assert (await co.request({"type": "write", "session": ws, "path": "notes.txt", "text": "base\n"}))[
            "type"
        ] == "write"
        ro, re_, rv = Replica(co, ws, "notes.txt"), Replica(ce, ws, "notes.txt"), Replica(cv, ws, "notes.txt")
        for r in (ro, re_, rv):
            await r.open()
        # both type within the same second, neither having seen the other's edit
        t0 = time.perf_counter()
        r = await ro.edit(0, "OWNER ")
        assert r["type"] == "ok", r
        assert (await re_.edit(len(str(re_.text)), "EDITOR\n"))["type"] == "ok"
        want = "OWNER base\nEDITOR\n"
        await re_.pump(lambda: str(re_.text) == want)
        print(f"update owner (backend a) -> editor (backend b): {(time.perf_counter() - t0) * 1000:.1f} ms")
        await ro.pump(lambda: str(ro.text) == want)
        await rv.pump(lambda: str(rv.text) == want)  # the viewer follows the document
        # a viewer's forged update (valid Yjs bytes) is refused by the backend: forbidden, nothing applied
        forged = Doc()
        forged.apply_update(rv.doc.get_update())
        ft = forged.get("text", type=Text)
        before = forged.get_state()
        ft.insert(0, "VIEWER WAS HERE ")
        upd = b64(forged.get_update(before))
        for kind in ("doc_update", "doc_awareness"):
            r = await cv.request({"type": kind, "session": ws, "path": "notes.txt", "update": upd})
            assert (r["type"], r["code"]) == ("error", "forbidden"), r
        # ... also without doc_open first, and for a path never opened
        r = await cv.request({"type": "doc_update", "session": ws, "path": "other.txt", "update": upd})
        assert (r["type"], r["code"]) == ("error", "forbidden"), r
        # an editor that did not open the document gets not_open; hostile fields get bad_field
        r = await ce.request({"type": "doc_update", "session": ws, "path": "nope.txt", "update": upd})
        assert (r["type"], r["code"]) == ("error", "not_open"), r
        r = await ce.request({"type": "doc_update", "session": ws, "path": "notes.txt", "update": 5})
        assert (r["type"], r["code"]) == ("error", "bad_field"), r

        # the checkout has the merged text (the worker writes it), never the viewer's
        async def on_disk() -> str:
            return str((await co.request({"type": "read", "session": ws, "path": "notes.txt"}))["text"])

        deadline = time.monotonic() + 10
        while await on_disk() != want:
            assert time.monotonic() < deadline, await on_disk()
            await asyncio.sleep(0.1)
        # a save by the owner names the editor as co-author
        saved = await co.request({"type": "save", "session": ws, "message": "together"})
        assert saved["type"] == "saved", saved
        h = await co.request({"type": "history", "session": ws, "limit": 1})
        top = h["commits"][0]
        assert top["author"] == "docowner" and top["coauthors"] == ["doceditor"], top
        assert "VIEWER" not in await on_disk()
    finally:
        for c in (co, ce, cv):
            await c.close()
    # the editor's backend drops its subscription when its last client goes
    await wait_until(lambda: not b.app.workspaces.docs.attached, what="subscriptions released")
