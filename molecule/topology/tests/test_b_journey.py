"""A user's journey through the VIP, over the real client protocol (HTTPS + SockJS): sign up, create a
workspace, run Sage and Python, save, read the history, share with a second account that sees the
change, publish; the published page comes from nginx through the VIP. Then: every service's log
records are in the database, through the log servers."""

from __future__ import annotations

import asyncio

import requests
from conftest import BACKENDS, BASE, CA, LOGSERVERS, WORKERS, once, query, wait_for

from tests.system.journey import SAGE_FACTOR, SAGE_FACTOR_RESULT, connect, new_user, new_workspace, run


async def journey() -> dict:
    alice = await new_user(BASE, CA, "alice")
    bob = await new_user(BASE, CA, "bob")
    ws = await new_workspace(alice, "topology")
    a = await connect(alice)
    b = await connect(bob, "xhr_streaming")
    try:
        assert (await a.request({"type": "open", "workspace": ws}))["type"] == "opened"
        sage, done = await run(a, ws, SAGE_FACTOR, "sage")
        assert done.get("status") == "ok", done
        python, done = await run(a, ws, "sum(range(10))", "python")
        assert done.get("status") == "ok", done
        w = await a.request({"type": "write", "session": ws, "path": "report.md", "text": "# result\n42\n"})
        assert w["type"] == "write", w
        saved = await a.request({"type": "save", "session": ws, "message": "first result"})
        assert saved["type"] == "saved", saved
        history = await a.request({"type": "history", "session": ws})
        assert history["commits"][0]["message"] == "first result", history
        shared = await a.request({"type": "share", "session": ws, "username": bob.name, "role": "editor"})
        assert shared["type"] == "ok", shared
        # bob (on whichever backend his connection landed) sees alice's saved change
        assert (await b.request({"type": "open", "workspace": ws}))["type"] == "opened"
        read = await b.request({"type": "read", "session": ws, "path": "report.md"})
        assert read.get("text") == "# result\n42\n", read
        published = await a.request({"type": "publish", "session": ws, "path": "report.md"})
        assert published["type"] == "published", published
    finally:
        await a.close()
        await b.close()
    return {"sage": sage, "python": python, "url": published["url"]}


def test_a_user_journey_through_the_vip(host):
    once(host)
    j = asyncio.run(journey())
    assert SAGE_FACTOR_RESULT in j["sage"]
    assert j["python"].strip() == "45"
    # the published page: the viewer and its content, from nginx (pulled from a backend over TLS)
    page = requests.get(f"{BASE}{j['url']}", verify=CA, timeout=10)
    assert page.status_code == 200 and "Content-Security-Policy" in page.headers
    raw = requests.get(f"{BASE}{j['url']}/raw", verify=CA, timeout=10)
    assert raw.status_code == 200 and raw.json()["text"] == "# result\n42\n", raw.text


def test_every_service_logs_into_the_database_through_the_log_servers(host):
    once(host)
    wanted = {("backend", h) for h in BACKENDS} | {("worker", h) for h in WORKERS}
    wanted |= {("logserver", h) for h in LOGSERVERS}

    seen: set = set()

    def stored() -> bool:
        seen.update(query("SELECT DISTINCT service, host FROM log_records"))
        return wanted <= seen

    try:
        wait_for(stored, 90, "log records from every backend, worker and log server")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: missing {sorted(wanted - seen)}, stored {sorted(seen)}") from None
