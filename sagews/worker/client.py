"""A small blocking client for the worker protocol (tests, benchmarks, `sagews worker-call`)."""

from __future__ import annotations

import itertools
import socket
import ssl
from typing import Any

from sagews.framing import DEFAULT_MAX_FRAME, HEADER, decode_body, encode
from sagews.tls import client_context


class WorkerError(Exception):
    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(f"{reply.get('code')}: {reply.get('message')}")
        self.code = reply.get("code")
        self.reply = reply


class WorkerClient:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        cert: str | None,
        key: str | None,
        ca: str,
        timeout: float = 60,
        hello: bool = True,
        server_hostname: str | None = None,
    ) -> None:
        ctx = client_context(cert, key, ca)
        raw = socket.create_connection((host, port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock: ssl.SSLSocket = ctx.wrap_socket(raw, server_hostname=server_hostname or host)
        self.ids = itertools.count(1)
        self.buf = bytearray()
        self.pending: list[dict[str, Any]] = []
        self.hello: dict[str, Any] | None = None
        if hello:
            self.hello = self.request("hello", versions=[1])

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, msg: dict[str, Any]) -> None:
        self.sock.sendall(encode(msg))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, max_size: int = DEFAULT_MAX_FRAME * 4) -> dict[str, Any] | None:
        """The next frame, or None when the server closed the connection."""
        while True:
            if len(self.buf) >= HEADER.size:
                (n,) = HEADER.unpack(self.buf[: HEADER.size])
                if n > max_size:
                    raise ValueError("frame too large")
                if len(self.buf) >= HEADER.size + n:
                    body = bytes(self.buf[HEADER.size : HEADER.size + n])
                    del self.buf[: HEADER.size + n]
                    return decode_body(body)
            try:
                chunk = self.sock.recv(1 << 20)
            except (ConnectionError, ssl.SSLError):
                chunk = b""
            if not chunk:
                return None
            self.buf += chunk

    def call(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        """Send one request; return every frame that refers to it, ending with the final reply."""
        req_id = next(self.ids)
        self.send({"type": kind, "id": req_id, **fields})
        frames = []
        while True:
            msg = self.recv()
            if msg is None:
                raise ConnectionError("the worker closed the connection")
            if msg.get("re") != req_id:
                self.pending.append(msg)
                continue
            frames.append(msg)
            if msg["type"] not in {"stream", "display", "result", "exception"}:
                return frames

    def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        reply = self.call(kind, **fields)[-1]
        if reply["type"] == "error":
            raise WorkerError(reply)
        return reply

    def execute(self, session: str, code: str, **fields: Any) -> dict[str, Any]:
        """Run code; returns a dict with done (final frame), stdout, stderr, result, exception, display."""
        frames = self.call("exec", session=session, code=code, **fields)
        out: dict[str, Any] = {"stdout": "", "stderr": "", "result": None, "exception": None, "display": []}
        for f in frames:
            if f["type"] == "stream":
                out[f["name"]] += f["text"]
            elif f["type"] == "result":
                out["result"] = f["data"]
            elif f["type"] == "exception":
                out["exception"] = f
            elif f["type"] == "display":
                out["display"].append(f["data"])
        out["done"] = frames[-1]
        if frames[-1]["type"] == "error":
            raise WorkerError(frames[-1])
        return out
