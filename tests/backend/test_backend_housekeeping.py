"""Autosave and idle close (never while computing)."""

from __future__ import annotations

import asyncio

from sagews.backend.workspaces import db_bundle_count, db_meta
from tests.backend.conftest import Backend
from tests.backend.helpers import SockClient, wait_until
from tests.backend.test_backend_protocol import make_ws


async def test_autosave_and_idle_close_never_while_computing(backend: Backend) -> None:
    svc = backend.app.workspaces
    u = await backend.new_user()
    ws, ws2 = await make_ws(u, "busy"), await make_ws(u, "watched")
    c = await SockClient(u).connect()
    c2 = await SockClient(u).connect()
    await c2.request({"type": "open", "workspace": ws2})
    await c2.request({"type": "write", "session": ws2, "path": "w.txt", "text": "autosaved"})
    await c.request({"type": "open", "workspace": ws})
    await c.request({"type": "write", "session": ws, "path": "r.txt", "text": "1"})
    code = "import os, time\nwhile not os.path.exists('stop'):\n    time.sleep(0.05)"
    run = asyncio.ensure_future(c.frames({"type": "exec", "session": ws, "code": code}))
    try:
        await wait_until(lambda: svc.open[ws].running == 1, what="exec running")
        await c.close()  # nobody watches ws any more, but it computes
        await wait_until(lambda: not svc.presence.get(ws), what="presence gone")
        await svc.housekeeping(idle_close=0)
        assert ws in svc.open and await backend.app.db.run(db_bundle_count, ws) == 0
        # the watched, changed, idle workspace was autosaved and stays open
        assert ws2 in svc.open and await backend.app.db.run(db_bundle_count, ws2) == 1
        assert (await svc.request(ws, "write", {"path": "stop", "text": ""}))["type"] == "write"
        await wait_until(lambda: svc.open[ws].running == 0, what="exec finished")
        await svc.housekeeping(idle_close=0)
        assert ws not in svc.open  # closed, after saving its changes
        assert await backend.app.db.run(db_bundle_count, ws) == 1
        assert (await backend.app.db.run(db_meta, ws))["worker_id"] is None
    finally:
        run.cancel()
        await c2.close()
