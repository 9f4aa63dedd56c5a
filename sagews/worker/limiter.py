"""Fair sharing of the worker's helper processes between sessions.

File and git operations each fork a helper (sagews/worker/workspace.py). A global FIFO would let
one session that queued 2,000 writes delay everyone else's ``ls`` by 2,000 forks; ``FairLimiter``
hands free slots to the waiting sessions in turn (round robin over keys, FIFO within a key), so a
bystander waits for at most one operation per busy session, and bounds what one key may queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator


class QueueFull(RuntimeError):
    """The key already has ``per_key`` operations waiting."""


class FairLimiter:
    def __init__(self, slots: int, per_key: int) -> None:
        self.slots = max(1, slots)
        self.per_key = per_key
        self.running = 0
        self.waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    def queued(self, key: str) -> int:
        return len(self.waiting.get(key, ()))

    @contextlib.asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        await self._acquire(key)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, key: str) -> None:
        if self.running < self.slots and not self.waiting:
            self.running += 1
            return
        queue = self.waiting.get(key)
        if queue is None:
            queue = self.waiting[key] = deque()
        if len(queue) >= self.per_key:
            raise QueueFull(f"{self.per_key} operations are already waiting for this session")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._release()  # the slot was handed to us just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(fut)
                if not queue and self.waiting.get(key) is queue:
                    del self.waiting[key]
            raise

    def _release(self) -> None:
        while self.waiting:
            key, queue = next(iter(self.waiting.items()))
            fut = queue.popleft()
            del self.waiting[key]
            if queue:
                self.waiting[key] = queue  # back of the line: the next key goes first
            if not fut.done():
                fut.set_result(None)  # the slot passes on; `running` is unchanged
                return
        self.running -= 1
