"""The helper forker: a small root process that forks the file/git helpers, so the worker does not.

Forking the worker itself (about 70 MB resident, with TLS state and every session) took 5 ms at the
median and 29 ms at p90 here, on the event loop, once per file operation: a flood of writes kept
the loop busy forking. This process is exec'd fresh (minimal environment, no TLS key, a few
modules), so its forks are cheap and happen outside the worker's loop.

Protocol (SOCK_SEQPACKET, one datagram per helper): ``{"op": "run", "timeout": s}`` with two file
descriptors (SCM_RIGHTS): the read end of an *arguments* pipe (the worker writes the helper's JSON
arguments into it, any size) and the write end of the *result* pipe (sagews/worker/workspace.py
``_child`` writes its JSON answer there). The forker forks, the child reads its arguments and runs
the helper with an alarm of ``timeout`` seconds; the forker reaps. Nothing is answered on the socket:
EOF on the result pipe without an answer means the helper died.

``{"op": "terminal", "ns": [names]}`` with the lifeline pipe's read end, the result pipe's write end,
a pty's slave and the engine's namespace files named in ``ns`` forks a terminal's keeper
(sagews/worker/terminal_child.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys

from sagews.worker import terminal_child, workspace  # imported once here: helpers drop privileges
from sagews.worker.users import Account
from sagews.worker.zygote_client import zygote_env


def _run_child(args_fd: int, result_fd: int, timeout: int) -> None:
    try:
        signal.alarm(max(1, timeout))  # the helper (and, with isolation, its namespace) dies after it
        with os.fdopen(args_fd, "rb") as fh:
            a = json.loads(fh.read())
        workspace.HELPER_LIMITS.update(a["helper_limits"])
        mounts = [tuple(m) for m in a["mounts"]] if a.get("mounts") is not None else None
        workspace._child(
            result_fd,
            Account(*a["account"]),
            a["root"],
            a["tmp"],
            a["op"],
            a["args"],
            a["fsize"],
            a["max_bytes"],
            mounts,  # type: ignore[arg-type]
        )
    finally:
        os._exit(1)


def main(argv: list[str]) -> int:
    from sagews.worker import engine

    engine._prctl(engine.PR_SET_PDEATHSIG, signal.SIGKILL)
    sock = socket.socket(fileno=int(argv[0]))
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the worker decides when we go
    signal.set_wakeup_fd(wfd)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "worker")
    sel.register(rfd, selectors.EVENT_READ, "signal")
    sock.send(b'{"op": "ready"}')
    while True:
        for key, _ in sel.select():
            if key.data == "signal":
                with contextlib.suppress(BlockingIOError):
                    os.read(rfd, 4096)
                with contextlib.suppress(ChildProcessError):
                    while os.waitpid(-1, os.WNOHANG)[0] > 0:
                        pass
                continue
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, 4096, 6)
            except ConnectionResetError:
                data, fds = b"", []
            if not data:
                return 0
            try:
                msg = json.loads(data)
                if msg.get("op") == "run" and len(fds) == 2 and os.fork() == 0:
                    sock.close()
                    _run_child(fds[0], fds[1], int(msg.get("timeout", 120)))
                names = [str(n) for n in msg.get("ns", [])] if isinstance(msg.get("ns"), list) else []
                if msg.get("op") == "terminal" and len(fds) == 3 + len(names) and os.fork() == 0:
                    sock.close()
                    terminal_child.keeper(fds[0], fds[1], fds[2], dict(zip(names, fds[3:], strict=True)))
            except (ValueError, OSError):
                pass  # a malformed request from our own worker: its helper reports no answer
            for fd in fds:
                os.close(fd)


class Forker:
    """The worker's side: start the forker, hand it helpers to fork."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = asyncio.Lock()

    async def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(  # noqa: ASYNC220 (a long-lived helper, never awaited)
            [sys.executable, "-m", "sagews.worker.forker", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=zygote_env(),
        )
        theirs.close()
        ours.setblocking(False)
        ready = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(ours, 64), 60)
        if b"ready" not in ready:
            raise RuntimeError("the helper forker did not start")
        self.sock = ours

    async def _ensure(self) -> socket.socket:
        async with self.lock:
            if self.sock is None or (self.proc is not None and self.proc.poll() is not None):
                if self.sock is not None:
                    self.sock.close()
                    self.sock = None
                await self.start()  # it died (or was never started): a new one
            if self.sock is None:
                raise RuntimeError("the helper forker is not running")
            return self.sock

    async def fork(self, args_read: int, result_write: int, seconds: float) -> None:
        """Ask for a helper; the descriptors are the child's (closed here once sent)."""
        try:
            sock = await self._ensure()
            socket.send_fds(sock, [json.dumps({"op": "run", "timeout": int(seconds)}).encode()],
                            [args_read, result_write])  # fmt: skip
        finally:
            os.close(args_read)
            os.close(result_write)

    async def terminal(self, lifeline: int, result_write: int, slave: int, ns: dict[str, int]) -> None:
        """Ask for a terminal's keeper; every descriptor passed is closed here once sent."""
        fds = [lifeline, result_write, slave, *ns.values()]
        try:
            sock = await self._ensure()
            socket.send_fds(sock, [json.dumps({"op": "terminal", "ns": list(ns)}).encode()], fds)
        finally:
            for fd in fds:
                os.close(fd)

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
