"""Rate limits and bounded queues for live requests (per connection and per account on a backend)."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; :meth:`take` spends one if it can."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self, cost: float = 1.0) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def wait(self) -> float:
        """Seconds until the next token."""
        return max(0.0, (1 - self.tokens) / self.rate) if self.rate > 0 else 0.0


class AccountLimits:
    """One token bucket and one in-flight semaphore per account with live connections here
    (reference-counted by its connections, so idle accounts cost nothing)."""

    def __init__(self, rate: float, burst: int, inflight: int, heavy_rate: float, heavy_burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.inflight = inflight
        self.heavy_rate = heavy_rate
        self.heavy_burst = heavy_burst
        self.entries: dict[int, Account] = {}

    def join(self, account_id: int) -> Account:
        entry = self.entries.get(account_id)
        if entry is None:
            entry = Account(
                TokenBucket(self.rate, self.burst),
                TokenBucket(self.heavy_rate, self.heavy_burst),
                asyncio.Semaphore(self.inflight),
            )
            self.entries[account_id] = entry
        entry.connections += 1
        return entry

    def leave(self, account_id: int) -> None:
        entry = self.entries.get(account_id)
        if entry is not None:
            entry.connections -= 1
            if entry.connections <= 0:
                del self.entries[account_id]


class Account:
    """What the connections of one account share: every request spends from ``bucket``; requests
    that cost a worker real work (HEAVY) also from ``heavy``; ``slots`` bounds them in flight."""

    __slots__ = ("bucket", "connections", "heavy", "slots")

    def __init__(self, bucket: TokenBucket, heavy: TokenBucket, slots: asyncio.Semaphore) -> None:
        self.bucket = bucket
        self.heavy = heavy
        self.slots = slots
        self.connections = 0


# requests that make a worker fork, run git or restore (their own, slower bucket per account)
HEAVY = frozenset({"open", "restart", "save", "history", "publish"})
