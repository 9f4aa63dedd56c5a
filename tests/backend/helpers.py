# ruff: noqa: ASYNC109, S107
"""Test clients for the backend: HTTP with cookies + CSRF, SockJS over websocket and xhr-streaming."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import tornado.httpclient
import tornado.websocket

from sagews.devpki import DevCA


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until(cond: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class HttpUser:
    """An HTTP client with a cookie jar that sends X-XSRFToken like static/js/protocol.js."""

    def __init__(self, base: str, ip: str | None = None, ca: str | None = None) -> None:
        self.base = base
        self.cookies: dict[str, str] = {}
        self.http = tornado.httpclient.AsyncHTTPClient()
        self.ip = ip  # sent as X-Forwarded-For (a backend with xheaders takes it as the client address)
        # https: verify the server against this CA (the appliance's), as a browser that imported it would
        self.tls: dict[str, Any] = {"ca_certs": ca, "validate_cert": True} if ca else {}

    def cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    async def req(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None, xsrf: bool = True
    ) -> tuple[int, Any]:
        headers = {"Cookie": self.cookie_header()} if self.cookies else {}
        if self.ip:
            headers["X-Forwarded-For"] = self.ip
        if xsrf and "_xsrf" in self.cookies:
            headers["X-XSRFToken"] = self.cookies["_xsrf"]
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if method in ("POST", "PUT") and data is None:
            data = b"{}"
        resp = await self.http.fetch(
            self.base + path,
            method=method,
            body=data,
            headers=headers,
            raise_error=False,
            request_timeout=60,
            **self.tls,
        )
        for h in resp.headers.get_list("Set-Cookie"):
            c = SimpleCookie()
            c.load(h)
            for k, m in c.items():
                if (m["expires"] and "1970" in m["expires"]) or m.value == "":
                    self.cookies.pop(k, None)
                else:
                    self.cookies[k] = m.value
        ctype = resp.headers.get("Content-Type", "")
        payload: Any = resp.body
        if "json" in ctype and resp.body:
            payload = json.loads(resp.body)
        return resp.code, payload

    async def me(self) -> Any:
        return (await self.req("GET", "/api/me"))[1]

    async def signup(self, name: str, password: str = "correct horse battery") -> tuple[int, Any]:
        await self.me()
        return await self.req("POST", "/api/signup", {"username": name, "password": password})

    async def login(self, name: str, password: str = "correct horse battery") -> tuple[int, Any]:
        await self.me()
        return await self.req("POST", "/api/login", {"username": name, "password": password})


class SockClient:
    """SockJS over a real transport: ``websocket`` or ``xhr_streaming`` (+ xhr_send)."""

    ids = itertools.count(1)

    def __init__(self, user: HttpUser, transport: str = "websocket") -> None:
        self.user = user
        self.transport = transport
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed: list[Any] | None = None
        self.ws: tornado.websocket.WebSocketClientConnection | None = None
        self.path = f"/sockjs/000/{secrets.token_hex(8)}"
        self.opened = asyncio.Event()
        self._buf = b""
        self._task: asyncio.Task[Any] | None = None
        self.pending: list[dict[str, Any]] = []
        self.waiters: dict[Any, asyncio.Queue[dict[str, Any]]] = {}
        self.presence: dict[str, list[str]] = {}  # workspace -> users, from opened and presence frames
        self.presence_frames = 0
        self.raw: list[str] | None = None  # when a list: message frames are kept unparsed (floods)
        self.heartbeats = 0

    async def connect(self, hello: bool = True) -> SockClient:
        headers = {"Cookie": self.user.cookie_header()}
        if self.transport == "websocket":
            url = self.user.base.replace("http", "ws", 1) + self.path + "/websocket"
            req = tornado.httpclient.HTTPRequest(url, headers=headers, **self.user.tls)
            self.ws = await tornado.websocket.websocket_connect(req)
            self._task = asyncio.ensure_future(self._ws_loop())
        else:
            req = tornado.httpclient.HTTPRequest(
                self.user.base + self.path + "/xhr_streaming",
                method="POST",
                body=b"",
                headers=headers,
                streaming_callback=self._on_chunk,
                request_timeout=300,
                **self.user.tls,
            )
            self._task = asyncio.ensure_future(self.user.http.fetch(req, raise_error=False))
        await asyncio.wait_for(self.opened.wait(), 20)
        if hello:
            r = await self.request({"type": "hello", "versions": [1], "xsrf": self.user.cookies.get("_xsrf")})
            assert r["type"] == "hello", r
        return self

    def _frame(self, f: str) -> None:
        if f == "o":
            self.opened.set()
        elif f == "h":
            self.heartbeats += 1
        elif f.startswith("a") and self.raw is not None:
            self.raw.append(f)
        elif f.startswith("a"):
            for raw in json.loads(f[1:]):
                m = json.loads(raw)
                if m.get("type") == "presence":
                    self.presence[m["workspace"]] = m["users"]
                    self.presence_frames += 1
                elif m.get("type") == "opened":
                    self.presence[m["workspace"]] = m["presence"]
                q = self.waiters.get(m.get("re"))
                (q or self.inbox).put_nowait(m)
        elif f.startswith("c"):
            self.closed = json.loads(f[1:])
            self.opened.set()
            self.inbox.put_nowait({"type": "_closed", "close": self.closed})
            for q in self.waiters.values():
                q.put_nowait({"type": "_closed", "close": self.closed})

    async def _ws_loop(self) -> None:
        assert self.ws is not None
        while True:
            m = await self.ws.read_message()
            if m is None:  # the connection dropped without a SockJS close frame (a killed server)
                if self.closed is None:
                    self.closed = [0, "eof"]
                    self.inbox.put_nowait({"type": "_closed", "close": self.closed})
                    for q in self.waiters.values():  # requests in flight end now, not at their timeout
                        q.put_nowait({"type": "_closed", "close": self.closed})
                self.opened.set()
                return
            self._frame(m if isinstance(m, str) else m.decode())

    def _on_chunk(self, chunk: bytes) -> None:
        self._buf += chunk
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            if line == b"h":
                self.heartbeats += 1
            elif line and set(line) != {ord("h")}:  # the prelude is a line of 2048 h
                self._frame(line.decode())

    async def send_raw(self, text: str) -> None:
        """One SockJS message (a string; the client library JSON-encodes our objects first)."""
        payload = json.dumps([text])
        if self.ws is not None:
            try:
                await self.ws.write_message(payload)
            except tornado.websocket.WebSocketClosedError as exc:
                # The server closed the socket before this write: nothing was sent, a re-send is safe.
                closed = f"{self.ws.close_code} {self.ws.close_reason}"
                raise ConnectionError(f"not sent: closed: {closed}") from exc
        else:
            r = await self.user.http.fetch(
                self.user.base + self.path + "/xhr_send",
                method="POST",
                body=payload.encode(),
                raise_error=False,
                **self.user.tls,
            )
            assert r.code in (200, 204), r.code

    async def send(self, msg: dict[str, Any]) -> Any:
        msg.setdefault("id", next(self.ids))
        await self.send_raw(json.dumps(msg))
        return msg["id"]

    async def recv(self, timeout: float = 30) -> dict[str, Any]:
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def frames(self, msg: dict[str, Any], timeout: float = 60) -> list[dict[str, Any]]:
        """Send a request; every frame about it, ending with the final one. Others are kept in pending."""
        msg.setdefault("id", next(self.ids))
        rid = msg["id"]
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.waiters[rid] = q
        try:
            await self.send(msg)
            out = []
            deadline = time.monotonic() + timeout
            while True:
                m = await asyncio.wait_for(q.get(), max(0.1, deadline - time.monotonic()))
                if m.get("type") == "_closed":
                    raise ConnectionError(f"closed: {m['close']}")
                out.append(m)
                if m["type"] not in ("stream", "display", "result", "exception"):
                    return out
        finally:
            self.waiters.pop(rid, None)

    async def request(self, msg: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        return (await self.frames(msg, timeout))[-1]

    async def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        if self._task is not None:
            self._task.cancel()


class WorkerProc:
    """A real sagews worker process (root, TLS) on 127.0.0.1, like tests/worker's."""

    def __init__(self, base: Path, pki: DevCA, pool: dict[str, object]) -> None:
        server = pki.issue("worker")
        base.mkdir(parents=True, exist_ok=True)
        base.chmod(0o755)
        self.base = base
        cfg = {
            "host": "127.0.0.1",
            "port": 0,
            "cert": str(server.cert),
            "key": str(server.key),
            "ca": str(pki.ca_cert_path),
            "workspaces_dir": str(base / "workspaces"),
            "state_dir": str(base / "state"),
            "tmp_dir": str(base / "tmp"),
            "engines": ["python"],
            "warm_pool": 1,
            **pool,
            "limits": {"walltime_seconds": 20, "processes": 32, "disk_quota_mb": 30},
        }
        (base / "worker.json").write_text(json.dumps(cfg))
        self.log = open(base / "worker.log", "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sagews.worker", "--config", str(base / "worker.json")],
            stdout=subprocess.PIPE,
            stderr=self.log,
            env={**os.environ},
            start_new_session=True,  # kill() takes its zygote and engines with it
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if "listening on" not in line:
            self.proc.kill()
            self.proc.wait()
            self.log.seek(0)
            raise RuntimeError(f"worker did not start: {line!r} {self.log.read().decode()[-2000:]}")
        self.port = int(line.split()[3].rsplit(":", 1)[1])

    def kill(self) -> None:
        """SIGKILL the worker's whole process group (a crash: no checkpoint, no goodbye)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()
