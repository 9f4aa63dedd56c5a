"""A small asyncio memcached client (text protocol): values are bytes, nothing is ever deserialised.

Why not python-memcached: it unpickles any value whose flags say "pickle", so whoever can write to
memcached could run code in the backend; and it blocks, so it needed a thread. This client speaks the
text protocol on the event loop, keeps a few connections per server, and treats memcached as an
untrusted store of bytes (``sagews.backend.cache`` authenticates what it reads).

Keys go to one server by CRC32 (every backend computes the same). A server that fails or times out is
skipped for ``dead_retry`` seconds: its calls raise :class:`MemcachedUnavailable` at once meanwhile
(callers fail open). Replies are bounded: a value longer than ``max_value`` drops the connection.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

MAX_KEY = 250


class MemcachedUnavailable(Exception):
    """The server for this key is down, slow, or answered something unreadable."""


class _Server:
    def __init__(self, address: str, pool_size: int) -> None:
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]") or "127.0.0.1"
        self.port = int(port or 11211)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.all: set[asyncio.StreamWriter] = set()  # idle or in use (closed by close())
        self.slots = asyncio.Semaphore(pool_size)
        self.dead_until = 0.0

    def close(self) -> None:
        for w in self.all:
            w.close()
        self.all.clear()
        self.idle.clear()


class MemcachedClient:
    def __init__(
        self,
        servers: list[str],
        timeout: float = 0.5,
        dead_retry: float = 2.0,
        pool_size: int = 4,
        max_value: int = 1 << 20,
    ) -> None:
        self.servers = [_Server(s, pool_size) for s in servers]
        self.timeout = timeout
        self.dead_retry = dead_retry
        self.max_value = max_value

    def _server(self, key: bytes) -> _Server:
        return self.servers[binascii.crc32(key) % len(self.servers)]

    @contextlib.asynccontextmanager
    async def _conn(self, srv: _Server) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        if time.monotonic() < srv.dead_until:
            raise MemcachedUnavailable(f"memcached {srv.host}:{srv.port} is marked down")
        async with srv.slots:
            conn = srv.idle.pop() if srv.idle else None
            try:
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection(srv.host, srv.port), self.timeout)
                    srv.all.add(conn[1])
                    sock = conn[1].get_extra_info("socket")
                    if sock is not None:
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                yield conn
            except (OSError, EOFError, ValueError, TimeoutError, asyncio.IncompleteReadError) as exc:
                if conn is not None:
                    conn[1].close()
                    srv.all.discard(conn[1])
                srv.dead_until = time.monotonic() + self.dead_retry
                raise MemcachedUnavailable(f"memcached {srv.host}:{srv.port}: {exc!r}") from exc
            except BaseException:  # cancelled mid-reply: the connection's state is unknown
                if conn is not None:
                    conn[1].close()
                    srv.all.discard(conn[1])
                raise
            srv.idle.append(conn)

    async def _call(self, key: bytes, command: bytes, parse: str) -> Any:
        if not 0 < len(key) <= MAX_KEY or any(c <= 32 or c == 127 for c in key):
            raise ValueError(f"bad memcached key {key[:40]!r}")
        srv = self._server(key)
        async with self._conn(srv) as (reader, writer):
            writer.write(command)
            return await asyncio.wait_for(self._reply(reader, parse), self.timeout)

    async def _reply(self, reader: asyncio.StreamReader, parse: str) -> object:
        if parse == "line":
            return (await reader.readuntil(b"\r\n"))[:-2]
        # "value": VALUE <key> <flags> <bytes> [<cas>]\r\n<data>\r\n ... END\r\n
        found: tuple[bytes, int | None] | None = None
        while True:
            line = (await reader.readuntil(b"\r\n"))[:-2]
            if line == b"END":
                return found
            parts = line.split()
            if len(parts) < 4 or parts[0] != b"VALUE":
                raise ValueError(f"unexpected memcached reply {line[:80]!r}")
            size = int(parts[3])
            if not 0 <= size <= self.max_value:
                raise ValueError(f"memcached value of {size} bytes refused")
            data = await reader.readexactly(size + 2)
            found = (data[:-2], int(parts[4]) if len(parts) > 4 else None)

    # commands ------------------------------------------------------------------------------------
    async def get(self, key: bytes) -> bytes | None:
        r = await self._call(key, b"get " + key + b"\r\n", "value")
        return r[0] if isinstance(r, tuple) else None

    async def gets(self, key: bytes) -> tuple[bytes, int] | None:
        """The value and its CAS token (for :meth:`cas`), or None."""
        r = await self._call(key, b"gets " + key + b"\r\n", "value")
        if isinstance(r, tuple) and r[1] is not None:
            return r[0], r[1]
        return None

    async def _store(self, verb: bytes, key: bytes, value: bytes, ttl: int, extra: bytes = b"") -> bytes:
        head = b"%s %s 0 %d %d%s\r\n" % (verb, key, max(0, int(ttl)), len(value), extra)
        r = await self._call(key, head + value + b"\r\n", "line")
        if r not in (b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND"):
            raise MemcachedUnavailable(f"memcached refused a {verb.decode()}: {r[:80]!r}")
        return r

    async def set(self, key: bytes, value: bytes, ttl: int) -> bool:
        return await self._store(b"set", key, value, ttl) == b"STORED"

    async def add(self, key: bytes, value: bytes, ttl: int) -> bool:
        """Store only if absent: True if stored, False if the key exists."""
        return await self._store(b"add", key, value, ttl) == b"STORED"

    async def cas(self, key: bytes, value: bytes, ttl: int, token: int) -> bool:
        """Store only if nobody wrote the key since :meth:`gets` returned ``token``."""
        return await self._store(b"cas", key, value, ttl, b" %d" % token) == b"STORED"

    async def delete(self, key: bytes) -> bool:
        r = await self._call(key, b"delete " + key + b"\r\n", "line")
        return r == b"DELETED"

    async def version(self) -> list[bool]:
        """Which servers answer ``version`` (one round trip each)."""
        out = []
        for srv in self.servers:
            try:
                async with self._conn(srv) as (reader, writer):
                    writer.write(b"version\r\n")
                    line = await asyncio.wait_for(reader.readuntil(b"\r\n"), self.timeout)
                    out.append(line.startswith(b"VERSION"))
            except MemcachedUnavailable:
                out.append(False)
        return out

    def close(self) -> None:
        for srv in self.servers:
            srv.close()
