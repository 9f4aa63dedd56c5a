"""The backend's cache: memcached, treated as untrusted storage (docs/security.md, "Backend").

Every value is JSON wrapped in an envelope authenticated with HMAC-SHA256 under ``cache_secret``:

    b"s1:" + hex(HMAC(secret, b"s1\\0" + full key + b"\\0" + body)) + b":" + body
    body = JSON {"e": expiry (unix seconds), "v": value}

The MAC covers the key, so a valid entry copied under another key (another session's token hash,
another workspace) fails; it covers the expiry, so an entry replayed after its TTL fails. An entry that
does not verify, does not parse, or has expired is a miss, counted in ``rejected`` (``/metrics``:
``sagews_cache_rejected``). Nothing read from memcached is ever deserialised other than by ``json``.

Fail-open: when memcached is unreachable every call is a miss / no-op and ``available`` says so.
Calls run on the event loop (``sagews.backend.memcached``). Values are small dicts; bundles never go here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

from sagews.backend.memcached import MemcachedClient, MemcachedUnavailable

log = logging.getLogger("sagews.backend.cache")
VERSION = b"s1"


def derive_secret(cookie_secret: str) -> bytes:
    """The cache key when ``cache_secret`` is not configured: derived from the cookie secret (which
    every backend shares already) under its own label, so the two keys are never the same bytes."""
    return hmac.new(cookie_secret.encode(), b"sagews cache authentication v1", hashlib.sha256).digest()


class Cache:
    def __init__(self, servers: list[str], secret: bytes, ttl: int = 300, prefix: str = "sagews:") -> None:
        if servers and len(secret) < 16:
            raise ValueError("the cache needs a secret of at least 16 bytes (cache_secret)")
        self.servers = servers
        self.secret = secret
        self.ttl = ttl
        self.prefix = prefix
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.rejected = 0  # entries that failed authentication, parsing or their expiry
        self.available = False
        self._last_probe = 0.0
        self._client = MemcachedClient(servers) if servers else None

    @property
    def enabled(self) -> bool:
        return self._client is not None

    # the envelope ----------------------------------------------------------------------------------
    def _key(self, key: str) -> bytes:
        return (self.prefix + key).encode()

    def _mac(self, full_key: bytes, body: bytes) -> bytes:
        return (
            hmac.new(self.secret, VERSION + b"\0" + full_key + b"\0" + body, hashlib.sha256)
            .hexdigest()
            .encode()
        )

    def seal(self, full_key: bytes, value: Any, ttl: int) -> bytes:
        body = json.dumps({"e": int(time.time()) + ttl, "v": value}, separators=(",", ":")).encode()
        return VERSION + b":" + self._mac(full_key, body) + b":" + body

    def open(self, full_key: bytes, raw: bytes) -> tuple[bool, Any]:
        """(True, value) for an authentic, unexpired entry; (False, None) otherwise (counted)."""
        try:
            version, mac, body = raw.split(b":", 2)
            if version != VERSION or not hmac.compare_digest(mac, self._mac(full_key, body)):
                raise ValueError("bad MAC")
            doc = json.loads(body)
            if not isinstance(doc, dict) or not isinstance(doc.get("e"), int) or doc["e"] < time.time():
                raise ValueError("expired or malformed")
        except (ValueError, RecursionError):
            self.rejected += 1
            if self.rejected in (1, 10, 100) or self.rejected % 1000 == 0:
                log.warning(
                    "memcached entry %r rejected (%d so far): forged, tampered or stale",
                    full_key[:60],
                    self.rejected,
                )
            return False, None
        return True, doc.get("v")

    # calls -----------------------------------------------------------------------------------------
    async def get(self, key: str) -> Any:
        found, value = await self.gets(key)
        return value if found else None

    async def gets(self, key: str) -> tuple[bool, Any]:
        """(found, value): ``found`` is False for a miss, a rejected entry or memcached down."""
        status, value = await self.lookup(key)
        return status == "hit", value

    async def lookup(self, key: str) -> tuple[str, Any]:
        """("hit", value), ("miss", None) (absent or rejected) or ("down", None) (unavailable)."""
        if self._client is None:
            return "down", None
        full = self._key(key)
        try:
            raw = await self._client.get(full)
        except MemcachedUnavailable:
            self.errors += 1
            self.misses += 1
            return "down", None
        if raw is not None:
            ok, value = self.open(full, raw)
            if ok:
                self.hits += 1
                return "hit", value
        self.misses += 1
        return "miss", None

    async def set(self, key: str, value: Any, ttl: int | None = None) -> bool:
        if self._client is None:
            return False
        full, ttl = self._key(key), ttl or self.ttl
        try:
            return await self._client.set(full, self.seal(full, value, ttl), ttl)
        except MemcachedUnavailable:
            self.errors += 1
            return False

    async def add(self, key: str, value: Any, ttl: int) -> bool | None:
        """Store only if absent (a lease); None when memcached is unavailable (callers fail open)."""
        if self._client is None:
            return None
        full = self._key(key)
        try:
            return await self._client.add(full, self.seal(full, value, ttl), ttl)
        except MemcachedUnavailable:
            self.errors += 1
            return None

    async def update(self, key: str, fn: Any, ttl: int, attempts: int = 5) -> Any:
        """Atomic read-modify-write (memcached CAS): ``fn(old value or None) -> (new value, ttl)``.
        Returns the stored value, or None if memcached is unavailable or kept changing under us."""
        if self._client is None:
            return None
        full = self._key(key)
        try:
            for _ in range(attempts):
                cur = await self._client.gets(full)
                old = None
                if cur is not None:
                    ok, old = self.open(full, cur[0])
                    old = old if ok else None
                new, new_ttl = fn(old)
                sealed = self.seal(full, new, new_ttl or ttl)
                if cur is None:
                    stored = await self._client.add(full, sealed, new_ttl or ttl)
                else:
                    stored = await self._client.cas(full, sealed, new_ttl or ttl, cur[1])
                if stored:
                    return new
        except MemcachedUnavailable:
            self.errors += 1
        return None

    async def delete(self, *keys: str) -> None:
        if self._client is None:
            return
        for key in keys:
            try:
                await self._client.delete(self._key(key))
            except MemcachedUnavailable:
                self.errors += 1

    async def probe(self) -> bool:
        """Whether at least one server answers (cached for 2 s: /metrics and /healthz stay cheap)."""
        if self._client is None:
            return False
        now = time.monotonic()
        if now - self._last_probe < 2:
            return self.available
        self._last_probe = now
        self.available = any(await self._client.version())
        return self.available

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
