"""Login throttling that stops password guessing without locking the owner out (docs/security.md).

Failures are counted per **account + source**, where the source is the browser's *device cookie*
(a signed cookie set by every successful login, bound to the account name) when it has one for this
account, else the client IP. Each source gets ``free`` failures, then exponential backoff: the n-th
failure beyond them blocks that source for ``base * 2^(n-1)`` seconds (up to ``max_delay``). Two slower
limits catch distributed and spraying attacks, and apply only to sources *without* a device cookie
for the account: per account over all sources (``account_limit`` failures per ``window``, then one
attempt per ``account_interval``), and per IP over all accounts (``ip_limit`` per ``window``, then
backoff). So an attacker, even one behind the owner's NAT or spread over many addresses, cannot stop
the owner from logging in from a browser that logged in before; a new browser of the owner is slowed
only while the account is under a distributed attack.

State is shared by every backend through the authenticated cache (CAS updates), and kept in-process
when memcached is unavailable. A source that is blocked gets 429 with ``retry_after`` before any
password is verified, so throttled guessing costs no argon2 time.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sagews.backend.cache import Cache


@dataclass
class LoginPolicy:
    free: int = 5  # failures per account + source before backoff starts
    base_delay: float = 1.0  # seconds; doubles with every further failure
    max_delay: float = 900.0
    window: int = 3600  # failures are forgotten this long after the last one
    account_limit: int = 100  # failures per account from sources without its device cookie, per window
    account_interval: float = 30.0  # beyond that: one attempt per this many seconds (per account)
    ip_limit: int = 300  # failures per IP over all accounts (no device cookie), per window


@dataclass
class Verdict:
    blocked: bool
    retry_after: float = 0.0
    scope: str = ""  # "source", "account" or "ip": which limit applies


def _k(kind: str, *parts: str) -> str:
    return f"login:{kind}:" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]


class LoginGuard:
    def __init__(self, cache: Cache, policy: LoginPolicy | None = None, max_local: int = 100_000) -> None:
        self.cache = cache
        self.policy = policy or LoginPolicy()
        self.local: OrderedDict[str, dict[str, float]] = OrderedDict()  # memcached down: per process
        self.max_local = max_local

    def keys(self, account: str, ip: str, device: str | None) -> list[tuple[str, str]]:
        """(scope, key) pairs that an attempt is checked against and a failure counts on."""
        account = account.lower()[:200]
        source = f"dev:{device}" if device else f"ip:{ip}"
        out = [("source", _k("src", account, source))]
        if not device:
            out += [("account", _k("acct", account)), ("ip", _k("ip", ip))]
        return out

    async def _get(self, key: str) -> dict[str, float] | None:
        status, value = await self.cache.lookup(key)
        if status == "hit":
            return value if isinstance(value, dict) else None
        if status == "miss":
            return None
        state = self.local.get(key)  # memcached unavailable (or not configured): this process's count
        if state is not None and state.get("exp", 0) < time.time():
            self.local.pop(key, None)
            return None
        return state

    async def check(self, account: str, ip: str, device: str | None) -> Verdict:
        now = time.time()
        for scope, key in self.keys(account, ip, device):
            state = await self._get(key)
            until = float(state.get("until", 0)) if state else 0.0
            if until > now:
                return Verdict(True, until - now, scope)
        return Verdict(False)

    def _bump(self, scope: str, old: Any) -> tuple[dict[str, float], int]:
        p, now = self.policy, time.time()
        n = int(old.get("n", 0)) + 1 if isinstance(old, dict) else 1
        until = float(old.get("until", 0)) if isinstance(old, dict) else 0.0
        if scope == "source" and n > p.free:
            until = now + min(p.max_delay, p.base_delay * 2 ** (n - p.free - 1))
        elif scope == "account" and n > p.account_limit:
            until = now + p.account_interval
        elif scope == "ip" and n > p.ip_limit:
            until = now + min(p.max_delay, p.base_delay * 2 ** min(30, n - p.ip_limit - 1))
        ttl = int(max(p.window, until - now + p.window)) + 1
        return {"n": n, "until": until, "exp": now + ttl}, ttl

    async def failed(self, account: str, ip: str, device: str | None) -> None:
        for scope, key in self.keys(account, ip, device):
            stored = None
            if self.cache.enabled:
                stored = await self.cache.update(
                    key, lambda old, s=scope: self._bump(s, old), self.policy.window
                )
            if stored is None:  # memcached unavailable: count in this process
                state, _ = self._bump(scope, self.local.get(key))
                self.local[key] = state
                self.local.move_to_end(key)
                while len(self.local) > self.max_local:
                    self.local.popitem(last=False)

    async def succeeded(self, account: str, ip: str, device: str | None) -> None:
        """The right password from this source: its own count starts again (the slower per-account
        and per-IP counts stay: a correct guess does not clear an attack's trail)."""
        key = self.keys(account, ip, device)[0][1]
        self.local.pop(key, None)
        await self.cache.delete(key)
