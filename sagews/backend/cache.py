"""memcached (python-memcached) for session->account lookups and workspace metadata.

Fail-open: when memcached is unreachable every call is a miss / no-op and ``available`` says so
(exported in /metrics). Calls are sub-millisecond on loopback but still block, so they run in one
cache thread (python-memcached keeps its sockets per thread). Values are small dicts; bundles never
go here (python-memcached silently refuses values over 1 MB).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any

import memcache


class Cache:
    def __init__(self, servers: list[str], ttl: int = 300, prefix: str = "sagews:") -> None:
        self.servers = servers
        self.ttl = ttl
        self.prefix = prefix
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.available = False
        self._last_probe = 0.0
        self._client: Any = memcache.Client(servers, socket_timeout=0.5, dead_retry=2) if servers else None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sagews-cache")

    @property
    def enabled(self) -> bool:
        return self._client is not None

    async def _call(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    async def get(self, key: str) -> Any:
        if self._client is None:
            return None
        try:
            value = await self._call(self._client.get, self.prefix + key)
        except Exception:
            self.errors += 1
            value = None
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    async def set(self, key: str, value: Any, ttl: int | None = None) -> bool:
        if self._client is None:
            return False
        try:
            ok = bool(await self._call(self._client.set, self.prefix + key, value, ttl or self.ttl))
        except Exception:
            ok = False
        if not ok:
            self.errors += 1
        return ok

    async def add(self, key: str, value: Any, ttl: int) -> bool | None:
        """Store only if absent (a lease); None when memcached is unavailable (callers fail open)."""
        if self._client is None:
            return None
        try:
            ok = await self._call(self._client.add, self.prefix + key, value, ttl)
        except Exception:
            self.errors += 1
            return None
        if ok:
            return True
        # python-memcached answers 0 both for "exists" and for "server dead": tell them apart
        return False if await self._call(self._client.get, self.prefix + key) is not None else None

    async def incr(self, key: str, ttl: int) -> int | None:
        """Atomically count ``key`` up (created with ``ttl``); None when memcached is unavailable."""
        if self._client is None:
            return None
        full = self.prefix + key

        def run() -> int | None:
            self._client.add(full, "0", ttl)
            value = self._client.incr(full)
            return int(value) if value is not None else None

        try:
            return await self._call(run)
        except Exception:
            self.errors += 1
            return None

    async def count(self, key: str) -> int:
        """The value of an ``incr`` counter (0 if absent or memcached is unavailable)."""
        if self._client is None:
            return 0
        try:
            value = await self._call(self._client.get, self.prefix + key)
        except Exception:
            self.errors += 1
            return 0
        try:
            return int(value or 0)
        except (TypeError, ValueError):
            return 0

    async def delete(self, *keys: str) -> None:
        if self._client is None:
            return
        for key in keys:
            try:
                await self._call(self._client.delete, self.prefix + key)
            except Exception:
                self.errors += 1

    async def probe(self) -> bool:
        """Whether at least one server answers (cached for 2 s: /metrics and /healthz stay cheap)."""
        if self._client is None:
            return False
        now = time.monotonic()
        if now - self._last_probe < 2:
            return self.available
        self._last_probe = now
        try:
            stats = await self._call(self._client.get_stats)
            self.available = bool(stats)
        except Exception:
            self.available = False
        return self.available

    def close(self) -> None:
        # python-memcached keeps its sockets per thread: close them in the one cache thread
        if self._client is not None:
            self._pool.submit(self._client.disconnect_all).result(timeout=5)
        self._pool.shutdown(wait=True)
