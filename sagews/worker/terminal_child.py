"""A terminal's processes: forked by the helper forker (sagews/worker/forker.py), never by the worker.

The forker's child is the terminal's **keeper** (root, the worker's PID namespace): it reads its
arguments (one JSON line) from the *lifeline* pipe, joins the session engine's PID namespace for its
children (``setns``; with isolation) and forks the **shell**, which joins the engine's IPC and mount
namespaces, enters the workspace's cgroup, becomes the session leader with the pty's slave as its
controlling terminal, drops to the workspace user with exactly the engine's rlimits and flags
(``engine.drop_privileges``, the function the engine itself runs) and execs the shell. So the shell
is confined like the engine: same uid, same namespaces (it dies with the engine's namespace),
same rlimits, same cgroup.

The keeper answers ``{"pid": N}`` (the shell's pid as the worker sees it) on the result pipe, then
waits: when the shell ends it writes ``{"exit": wait_status}`` and exits; when the worker closes the
lifeline (``term_close``, session close, or the worker died) it kills every process of the shell's
session first. The keeper holds the shell unreaped until then, so its pid is never reused under it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import selectors
import signal
import termios
from typing import Any, NoReturn

from sagews.worker import engine, isolation

SHELLS = ("/bin/bash", "/bin/sh")
DEFAULT_SIGNALS = tuple(
    getattr(signal, f"SIG{n}")
    for n in ("CHLD", "TERM", "INT", "QUIT", "HUP", "PIPE", "TSTP", "TTIN", "TTOU", "ALRM")
)


def shell_path() -> str:
    for path in SHELLS:
        if os.access(path, os.X_OK):
            return path
    return SHELLS[-1]


def _read_line(fd: int) -> dict[str, Any]:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = os.read(fd, 65536)
        if not chunk:
            raise EOFError("the worker closed the terminal's arguments early")
        buf += chunk
    args: dict[str, Any] = json.loads(buf)
    return args


def _session_members(sid: int) -> list[int]:
    """Processes (host pids) whose session is ``sid``: the shell and everything it started that did
    not make a session of its own."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            found.append(int(name))
    return found


def _kill_session(sid: int) -> None:
    for _ in range(3):
        members = _session_members(sid)
        if not members:
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _shell(a: dict[str, Any], slave: int, ns: dict[str, int]) -> NoReturn:
    try:
        _enter_and_exec(a, slave, ns)
    except BaseException as exc:  # shown in the terminal itself: the keeper then reports the exit
        with contextlib.suppress(OSError):
            os.write(
                2 if os.isatty(2) else slave, f"[sagews: the terminal did not start: {exc}]\r\n".encode()
            )
    finally:
        os._exit(127)


def _enter_and_exec(a: dict[str, Any], slave: int, ns: dict[str, int]) -> None:
    """Join the engine's namespaces and cgroup, take the pty, drop privileges, exec the shell."""
    if "ipc" in ns:
        isolation.setns(ns["ipc"], isolation.CLONE_NEWIPC)
    if "mnt" in ns:
        isolation.setns(ns["mnt"], isolation.CLONE_NEWNS)  # also moves root and cwd: chdir below
    if a.get("cgroup"):
        with open(os.path.join(a["cgroup"], "cgroup.procs"), "w") as fh:
            fh.write("0")  # this process, before it runs anything of the user's
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.closerange(3, 65536)
    signal.set_wakeup_fd(-1)
    for sig in DEFAULT_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    signal.alarm(0)
    engine.drop_privileges({**a, "isolate": False})  # the engine's own rlimits, uid drop and flags
    shell = a["shell"]
    os.execve(shell, [os.path.basename(shell)], dict(os.environ))  # noqa: S606 (the shell is the point)


def keeper(args_fd: int, result_fd: int, slave: int, ns: dict[str, int]) -> NoReturn:
    """The forker's child for one terminal (see the module's docstring). Never returns."""
    try:
        engine._prctl(engine.PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.set_wakeup_fd(-1)  # the forker's wakeup pipe is not ours
        a = _read_line(args_fd)
        if "pid" in ns:
            isolation.setns(ns["pid"], isolation.CLONE_NEWPID)  # for the children forked from here on
        pid = os.fork()
        if pid == 0:
            os.close(args_fd)
            os.close(result_fd)
            _shell(a, slave, ns)
        os.close(slave)
        for fd in ns.values():
            os.close(fd)
        os.write(result_fd, json.dumps({"pid": pid}).encode() + b"\n")
        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wfd)
        sel = selectors.DefaultSelector()
        sel.register(args_fd, selectors.EVENT_READ, "lifeline")
        sel.register(rfd, selectors.EVENT_READ, "signal")
        status = None
        while status is None:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                break
            for key, _ in sel.select():
                if key.data == "signal":
                    with contextlib.suppress(BlockingIOError):
                        os.read(rfd, 4096)
                elif not os.read(args_fd, 4096):  # the worker let go: end the terminal
                    sel.unregister(args_fd)
                    _kill_session(pid)
                    status = os.waitpid(pid, 0)[1]
                    break
        _kill_session(pid)  # what the shell left running in its session (an id in use is not reused)
        with contextlib.suppress(OSError):
            os.write(result_fd, json.dumps({"exit": status}).encode() + b"\n")
    except BaseException as exc:  # reported to the worker, which logs it
        with contextlib.suppress(Exception):
            os.write(result_fd, json.dumps({"error": f"{type(exc).__name__}: {exc}"[:500]}).encode() + b"\n")
    finally:
        os._exit(0)
