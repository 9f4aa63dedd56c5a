"""The server's side of the zygote (sagews/worker/zygote.py): start it, ask it for engine forks.

Engines arrive as ``EngineProc``: pid, control-socket streams and the stdout/stderr pipe ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from sagews.worker.protocol import CHUNK


def zygote_env() -> dict[str, str]:
    """The zygote's whole environment: its memory (initial environment block included, readable in
    /proc/self/environ) is what every engine starts from, so nothing of the worker's goes there."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    env["HOME"] = os.environ.get("HOME") or "/root"  # Sage's import creates $HOME/.sage (root's)
    for name in ("PYTHONPATH", "DOT_SAGE", "MPLCONFIGDIR"):  # where imports find code and caches
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


@dataclass
class EngineProc:
    pid: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    out_fd: int
    err_fd: int
    exited: asyncio.Future[int]
    init_pid: int = 0  # isolated: PID 1 of the engine's namespaces (pid is its keeper's)


class Zygote:
    def __init__(self, engines: list[str], on_death: Any = None, isolate: bool = False) -> None:
        self.on_death = on_death
        self.isolate = isolate
        self.wanted = engines
        self.available: list[str] = []
        self.sock: socket.socket | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.tokens = itertools.count(1)
        self.spawning: dict[int, asyncio.Future[tuple[int, asyncio.Future[int]]]] = {}
        self.exits: dict[int, asyncio.Future[int]] = {}
        self.ready: asyncio.Future[dict[str, Any]] | None = None
        self.started = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        self.ready = loop.create_future()
        self.proc = subprocess.Popen(  # noqa: ASYNC220 (a long-lived helper, never awaited)
            [
                sys.executable,
                "-m",
                "sagews.worker.zygote",
                str(theirs.fileno()),
                json.dumps(self.wanted),
                "isolate" if self.isolate else "plain",
            ],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=zygote_env(),
        )
        theirs.close()
        ours.setblocking(False)
        loop.add_reader(ours.fileno(), self._on_message)
        msg = await asyncio.wait_for(self.ready, 120)
        self.available = list(msg["engines"])
        self.started.set()

    def _on_message(self) -> None:
        if self.sock is None:
            raise RuntimeError("the zygote is not running")
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
                for fut in self.exits.values():
                    if not fut.done():
                        fut.set_result(-1)
                for sfut in self.spawning.values():
                    if not sfut.done():
                        sfut.set_exception(RuntimeError("the zygote is gone"))
                self.exits.clear()
                self.spawning.clear()
                if self.ready and not self.ready.done():
                    self.ready.set_exception(RuntimeError("zygote died during start"))
                elif self.on_death is not None:
                    self.on_death()
                return
            msg = json.loads(data)
            op = msg.get("op")
            if op == "ready" and self.ready:
                self.ready.set_result(msg)
            elif op == "spawned":
                # the exit future exists from here on, so an engine that dies at once is still reported
                exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
                self.exits[msg["pid"]] = exited
                sfut = self.spawning.pop(msg["token"], None)
                if sfut and not sfut.done():
                    sfut.set_result((msg["pid"], exited))
            elif op == "exited":
                fut = self.exits.pop(msg["pid"], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg["status"])

    async def spawn(self) -> EngineProc:
        if self.sock is None:
            raise RuntimeError("the zygote is not running")
        loop = asyncio.get_running_loop()
        ctrl, child_ctrl = socket.socketpair()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        token = next(self.tokens)
        fut: asyncio.Future[tuple[int, asyncio.Future[int]]] = loop.create_future()
        self.spawning[token] = fut
        try:
            try:
                socket.send_fds(
                    self.sock,
                    [json.dumps({"op": "spawn", "token": token}).encode()],
                    [child_ctrl.fileno(), out_w, err_w],
                )
            finally:
                child_ctrl.close()
                os.close(out_w)
                os.close(err_w)
            pid, exited = await asyncio.wait_for(fut, 30)
            os.set_blocking(out_r, False)
            os.set_blocking(err_r, False)
            ctrl.setblocking(False)
            reader, writer = await asyncio.open_unix_connection(
                sock=ctrl, limit=CHUNK
            )  # small: unread frames back-pressure the engine
        except BaseException:
            self.spawning.pop(token, None)
            ctrl.close()
            os.close(out_r)
            os.close(err_r)
            raise
        return EngineProc(pid, reader, writer, out_r, err_r, exited)

    def stop(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
