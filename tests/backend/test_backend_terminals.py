# ruff: noqa: ASYNC109
"""Terminals and completion through the backend: real SockJS, a real worker, PostgreSQL, memcached."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from tests.backend.conftest import Backend
from tests.backend.helpers import SockClient
from tests.backend.test_backend_protocol import make_ws


async def screen(
    c: SockClient, terminal: str, pattern: str, timeout: float = 20
) -> tuple[str, list[dict[str, Any]]]:
    """Read ``term_output`` of ``terminal`` from the client's unsolicited frames until ``pattern``
    matches; returns the text and the other unsolicited frames seen meanwhile."""
    text, other = "", []
    deadline = time.monotonic() + timeout
    while not re.search(pattern, text):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{pattern!r} not seen in {text[-1500:]!r} (other frames: {other})")
        try:
            m = await c.recv(left)
        except TimeoutError:
            continue
        if m.get("type") == "term_output" and m.get("terminal") == terminal:
            text += m["data"]
        else:
            other.append(m)
    return text, other


async def test_terminal_relay_and_reattach(backend: Backend) -> None:
    u = await backend.new_user("termowner")
    ws = await make_ws(u, "terminals")
    c = await SockClient(u).connect()
    try:
        await c.request({"type": "open", "workspace": ws})
        r = await c.request({"type": "term_open", "session": ws, "rows": 20, "cols": 70})
        assert r["type"] == "term_opened" and r["session"] == ws, r
        tid = r["terminal"]
        await c.send({"type": "term_input", "session": ws, "terminal": tid,
                      "data": "echo $USER; stty size; echo X-$((40+2))\n"})  # fmt: skip
        text, _ = await screen(c, tid, r"X-42")
        assert re.search(r"sagews_\w+\r\n", text) and "20 70" in text, text
        # keystroke -> echo through backend and worker (the test client's websocket, loopback)
        samples = []
        for ch in "abcdefghij":
            t0 = time.perf_counter()
            await c.send({"type": "term_input", "session": ws, "terminal": tid, "data": ch})
            await screen(c, tid, re.escape(ch))
            samples.append(time.perf_counter() - t0)
        samples.sort()
        print(
            f"keystroke->echo via backend+worker: median {samples[5] * 1000:.2f} ms, "
            f"max {samples[-1] * 1000:.2f} ms"
        )
        await c.send(
            {"type": "term_input", "session": ws, "terminal": tid, "data": "\x15"}
        )  # ^U: drop the line
        listed = await c.request({"type": "term_list", "session": ws})
        assert [t["terminal"] for t in listed["terminals"]] == [tid], listed
        # hostile fields: clear errors, nothing relayed
        for bad in ({"terminal": 7}, {"terminal": "x" * 100}, {"rows": "many"}, {"data": ["x"]}):
            kind = "term_resize" if "rows" in bad else "term_input"
            r = await c.request({"type": kind, "session": ws, "terminal": tid, "rows": 5, "cols": 5, **bad})
            assert (r["type"], r["code"]) == ("error", "bad_field"), (bad, r)
    finally:
        await c.close()
    # a reload: a new connection reattaches by id and gets the scrollback
    c2 = await SockClient(u).connect()
    try:
        await c2.request({"type": "open", "workspace": ws})
        r = await c2.request({"type": "term_attach", "session": ws, "terminal": tid})
        assert r["type"] == "term_attached" and "X-42" in r["replay"], r
        await c2.send({"type": "term_input", "session": ws, "terminal": tid, "data": "echo again-$((3*3))\n"})
        await screen(c2, tid, r"again-9")
        r = await c2.request({"type": "term_close", "session": ws, "terminal": tid})
        assert r["type"] == "ok", r
        other: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while not any(m.get("type") == "term_exit" for m in other) and time.monotonic() < deadline:
            other.append(await c2.recv(10))
        assert any(m.get("type") == "term_exit" and m["terminal"] == tid for m in other), other
    finally:
        await c2.close()


async def test_viewer_gets_no_terminal_and_downgrade_detaches(backend: Backend) -> None:
    owner = await backend.new_user("termown2")
    editor = await backend.new_user("termeditor")
    ws = await make_ws(owner, "shared terminals")
    await owner.req("POST", f"/api/workspaces/{ws}/share", {"username": "termeditor", "role": "editor"})
    co = await SockClient(owner).connect()
    ce = await SockClient(editor).connect()
    try:
        await co.request({"type": "open", "workspace": ws})
        assert (await ce.request({"type": "open", "workspace": ws}))["role"] == "editor"
        r = await ce.request({"type": "term_open", "session": ws})
        tid = r["terminal"]
        await ce.send({"type": "term_input", "session": ws, "terminal": tid, "data": "echo ED-$((1+1))\n"})
        await screen(ce, tid, "ED-2")
        # the owner attaches to the same terminal: both see its output
        r = await co.request({"type": "term_attach", "session": ws, "terminal": tid})
        assert r["type"] == "term_attached"
        # downgrade the editor: detached at once, told why, refused from then on
        await owner.req("POST", f"/api/workspaces/{ws}/share", {"username": "termeditor", "role": "viewer"})
        deadline = time.monotonic() + 10
        seen: list[dict[str, Any]] = []
        while not any(m.get("type") == "term_detached" for m in seen):
            assert time.monotonic() < deadline, seen
            seen.append(await ce.recv(10))
        det = next(m for m in seen if m["type"] == "term_detached")
        assert det["terminal"] == tid and "read-only" in det["reason"], det
        # output after the downgrade reaches the owner, not the viewer
        await co.send({"type": "term_input", "session": ws, "terminal": tid, "data": "echo AFTER-$((5*5))\n"})
        await screen(co, tid, "AFTER-25")
        await asyncio.sleep(0.3)
        while not ce.inbox.empty():
            m = ce.inbox.get_nowait()
            assert m.get("type") != "term_output", m
        for msg in (
            {"type": "term_input", "terminal": tid, "data": "id\n"},
            {"type": "term_attach", "terminal": tid},
            {"type": "term_open"},
            {"type": "term_list"},
            {"type": "complete", "code": "pri"},
        ):
            r = await ce.request({**msg, "session": ws})
            assert (r["type"], r["code"]) == ("error", "forbidden"), (msg, r)
    finally:
        await co.close()
        await ce.close()


async def test_completion_relay(backend: Backend) -> None:
    u = await backend.new_user("complete1")
    ws = await make_ws(u, "completion")
    c = await SockClient(u).connect()
    try:
        await c.request({"type": "open", "workspace": ws})
        await c.frames({"type": "exec", "session": ws, "code": "from math import factorial"})
        r = await c.request({"type": "complete", "session": ws, "code": "y = facto", "cursor": 9})
        assert r["type"] == "completions" and "factorial" in r["matches"] and r["start"] == 4, r
        r = await c.request({"type": "complete", "session": ws, "code": "", "cursor": 0})
        assert r["type"] == "completions" and r["matches"] == [], r
        r = await c.request({"type": "complete", "session": ws, "code": "x", "cursor": -1})
        assert r["code"] == "bad_field", r
    finally:
        await c.close()
