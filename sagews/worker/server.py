"""The worker server: mutually authenticated TLS, framed JSON, one forked engine per open workspace.

See docs/protocol-worker.md for the protocol and docs on limits. Process layout::

    sagews-worker (root, asyncio; holds the TLS key)
      +-- zygote (root; pre-imports engines; no key in memory)
      |     +-- engine for workspace A (uid sagews_worker_1, rlimits)  [+ pre-forked warm ones]
      |     +-- engine for workspace B (uid sagews_worker_2, rlimits)
      +-- short-lived forks for file/git operations (as the workspace uid)
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from sagews.worker.config import WorkerConfig
from sagews.worker.worker import Worker


async def serve(config: WorkerConfig, ready: Any = None) -> None:
    worker = Worker(config)
    port = await worker.start()
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result("SIGTERM"))
    loop.add_signal_handler(signal.SIGINT, lambda: stop.done() or stop.set_result("SIGINT"))
    print(f"sagews-worker listening on {config.host}:{port} engines={','.join(worker.engines)}", flush=True)
    if ready is not None:
        ready(port)
    await stop
    await worker.shutdown()
