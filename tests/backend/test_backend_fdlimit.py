"""At the open-file limit the backend keeps serving its connections and refuses new ones cheaply.

A real `sagews-backend` process (PostgreSQL, no worker needed) started with RLIMIT_NOFILE = 200;
websocket sessions are opened until it refuses, then: its CPU stays low while connections keep
arriving (Tornado's own accept loop spun at 100 % on EMFILE), an existing session still gets its
pong, a refused client learns at once, and after some sessions close new ones are accepted again.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import secrets
import subprocess
import sys
import time
from pathlib import Path

import tornado.httpclient
import tornado.websocket

from sagews.db import migrate
from tests.backend.helpers import HttpUser, free_port

LIMIT = 200


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


async def ws_session(base: str, cookie: str, xsrf: str) -> tornado.websocket.WebSocketClientConnection:
    url = base.replace("http", "ws", 1) + f"/sockjs/000/{secrets.token_hex(6)}/websocket"
    ws = await tornado.websocket.websocket_connect(
        tornado.httpclient.HTTPRequest(url, headers={"Cookie": cookie}, connect_timeout=5, request_timeout=5)
    )
    assert await asyncio.wait_for(ws.read_message(), 5) == "o"
    await ws.write_message(
        json.dumps([json.dumps({"type": "hello", "id": 0, "versions": [1], "xsrf": xsrf})])
    )
    m = await asyncio.wait_for(ws.read_message(), 5)
    assert m is not None and "hello" in m, m
    return ws


async def ping(ws: tornado.websocket.WebSocketClientConnection) -> None:
    await ws.write_message(json.dumps([json.dumps({"type": "ping", "id": 7})]))
    while True:
        m = await asyncio.wait_for(ws.read_message(), 5)
        assert m is not None
        if "pong" in m:
            return


async def test_descriptor_limit_refuses_new_connections_cheaply(pg_url: str, tmp_path: Path) -> None:
    migrate.upgrade(pg_url)
    port = free_port()
    cfg = {"host": "127.0.0.1", "port": port, "cookie_secret": secrets.token_hex(16), "secure_cookies": False,
           "db": {"url": pg_url, "pool_size": 2}}  # fmt: skip
    (tmp_path / "backend.json").write_text(json.dumps(cfg))
    log_fd = os.open(tmp_path / "backend.log", os.O_WRONLY | os.O_CREAT, 0o600)
    proc = subprocess.Popen(  # noqa: ASYNC220 (started once; the test then only talks to it)
        [sys.executable, "-c", "import sys; from sagews.backend.app import main; sys.exit(main())",
         "--config", str(tmp_path / "backend.json"), "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=log_fd, preexec_fn=_limit_fds,  # noqa: PLW1509
    )  # fmt: skip
    os.close(log_fd)
    conns: list[tornado.websocket.WebSocketClientConnection] = []
    try:
        assert proc.stdout is not None
        line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
        assert b"listening" in line, (line, (tmp_path / "backend.log").read_text()[-2000:])
        base = f"http://127.0.0.1:{port}"
        u = HttpUser(base)
        assert (await u.signup("fds"))[0] == 200
        cookie, xsrf = u.cookie_header(), u.cookies["_xsrf"]
        refused = 0
        for _ in range(LIMIT + 50):
            t0 = time.monotonic()
            try:
                conns.append(await ws_session(base, cookie, xsrf))
            except (OSError, TimeoutError, tornado.httpclient.HTTPClientError, AssertionError):
                refused += 1
                assert time.monotonic() - t0 < 3, "a refused client should learn at once, not time out"
                if refused >= 5:
                    break
        assert refused >= 5 and len(conns) > LIMIT // 2, (refused, len(conns))
        # connections keep arriving at the full backend: it must not spin on its listening socket
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        while time.monotonic() - t0 < 2:
            try:
                extra = await ws_session(base, cookie, xsrf)
                conns.append(extra)
            except (OSError, TimeoutError, tornado.httpclient.HTTPClientError, AssertionError):
                pass
            await asyncio.sleep(0.05)
        cores = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        assert cores < 0.5, f"backend used {cores:.2f} cores while at its descriptor limit"
        await ping(conns[0])  # the sessions it has are served
        await ping(conns[len(conns) // 2])
        for ws in conns[:20]:
            ws.close()
        del conns[:20]
        deadline = time.monotonic() + 10
        while True:  # a freed descriptor is used again (the backend notices closes within a moment)
            try:
                conns.append(await ws_session(base, cookie, xsrf))
                break
            except (OSError, TimeoutError, tornado.httpclient.HTTPClientError, AssertionError):
                assert time.monotonic() < deadline, "no new connection accepted after sessions closed"
                await asyncio.sleep(0.2)
        _, metrics = await u.req("GET", "/metrics")
        assert "sagews_accept_refused_total 0" not in metrics.decode()
    finally:
        for ws in conns:
            ws.close()
        proc.kill()  # graceful shutdown is tested elsewhere
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
