"""The zygote: a small root process that pre-imports the engines once and forks session children.

The server starts it (``python -m sagews.worker.zygote FD ENGINES isolate|plain``), in a minimal
environment (nothing of the worker's reaches the engines' memory), with one end of a
SOCK_SEQPACKET pair. Messages are single JSON datagrams; ``spawn`` carries the child's control
socket and its stdout/stderr pipe ends as SCM_RIGHTS file descriptors. Forks are cheap (the
children share the imported engine pages copy-on-write), so a warm session starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import sys
from typing import Any

from sagews.worker import engine as engine_mod
from sagews.worker import isolation


def _send(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.send(json.dumps(msg).encode())


def _quiet() -> None:
    """Keep no descriptor of the engine's (its pipes and socket reach EOF when the engine ends)."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.closerange(3, 65536)


def _spawn(fds: list[int], engines: list[str], isolate: bool) -> int:
    """Fork an engine. With ``isolate``, into new PID/mount/IPC namespaces (sagews/worker/isolation.py):
    the returned pid is a keeper in our namespace, whose child is the new namespace's init (PID 1),
    whose child is the engine; each dies with its parent (parent-death signal), so killing the
    keeper ends the whole namespace."""
    ctrl, out, err = fds
    pid = os.fork()
    if pid:
        return pid
    try:
        os.setsid()
        engine_mod._prctl(engine_mod.PR_SET_PDEATHSIG, signal.SIGKILL)
        if isolate:
            isolation.unshare(isolation.NAMESPACES)
            init = os.fork()
            if init:
                _quiet()
                isolation.keeper_loop(init)
            engine_mod._prctl(engine_mod.PR_SET_PDEATHSIG, signal.SIGKILL)
            engine = os.fork()
            if engine:
                _quiet()
                isolation.init_loop(engine)
            os.setsid()
            engine_mod._prctl(engine_mod.PR_SET_PDEATHSIG, signal.SIGKILL)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.dup2(ctrl, 3)
        os.closerange(4, 65536)
        for sig in (signal.SIGCHLD, signal.SIGTERM):  # SIGINT keeps its (cysignals) handler, blocked
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        engine_mod.child_main(3, engines)
    finally:
        os._exit(5)


def main(argv: list[str]) -> int:
    engine_mod._prctl(engine_mod.PR_SET_PDEATHSIG, signal.SIGKILL)
    sock = socket.socket(fileno=int(argv[0]))
    wanted = json.loads(argv[1])
    isolate = len(argv) > 2 and argv[2] == "isolate"
    available = engine_mod.preload(wanted)
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    os.set_blocking(rfd, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the server decides when we go
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # children inherit the mask, not a new handler
    signal.set_wakeup_fd(wfd)
    children: set[int] = set()
    _send(sock, {"op": "ready", "engines": available, "pid": os.getpid()})
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "server")
    sel.register(rfd, selectors.EVENT_READ, "signal")
    while True:
        for key, _ in sel.select():
            if key.data == "signal":
                with contextlib.suppress(BlockingIOError):
                    os.read(rfd, 4096)
                while children:
                    try:
                        pid, status = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    children.discard(pid)
                    if isolate:
                        status = isolation.decode_init_status(status)
                    _send(sock, {"op": "exited", "pid": pid, "status": status})
                continue
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, 65536, 8)
            except ConnectionResetError:
                data, fds = b"", []
            if not data:
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                return 0
            msg = json.loads(data)
            if msg.get("op") == "spawn" and len(fds) == 3:
                pid = _spawn(fds, available, isolate)
                children.add(pid)
                _send(sock, {"op": "spawned", "token": msg["token"], "pid": pid})
            for fd in fds:
                os.close(fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
