"""Linux namespaces for workspace processes, with the kernel's own calls (ctypes; no exec needed).

Engines are forked from the zygote, which has Sage imported: an exec (bubblewrap, unshare(1))
would throw that away, so the namespaces are made in the forked children themselves:

* the zygote's fork (a keeper, ``keeper_loop``) calls ``unshare`` for new PID, mount and IPC
  namespaces and forks their PID 1 (``init_loop``), which forks the engine and reaps orphans; when
  it dies the kernel kills every process left in the namespace, so a workspace's processes cannot
  outlive its engine. Each of the three dies with its parent (parent-death signal).
* ``enter_private_mounts(mounts)``: in the child's own mount namespace, before the privilege drop:
  mount propagation off, the workspace's private directories bound over ``/tmp``, ``/var/tmp``,
  ``/dev/shm`` and ``/run/lock``, and a fresh ``/proc`` that shows only the namespace's processes.
* SysV IPC objects live in the IPC namespace and vanish with it.

Plain ``os.fork`` everywhere (a raw ``clone`` would skip glibc's fork handlers, and the zygote may
have library threads). See docs/security.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Iterable

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
NAMESPACES = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWPID

MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

# The private directories of a workspace and where its processes see them.
PRIVATE_DIRS = {"tmp": "/tmp", "var-tmp": "/var/tmp", "shm": "/dev/shm", "lock": "/run/lock"}  # noqa: S108

_libc = ctypes.CDLL(None, use_errno=True)


class IsolationError(OSError):
    pass


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise IsolationError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int) -> None:
    """Join the namespace ``fd`` refers to (a /proc/PID/ns/* file): a terminal joins its engine's."""
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    ret = _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))
    _check(ret, f"mount {source or fstype} on {target}")


def probe() -> str | None:
    """None if this process can make PID/mount/IPC namespaces, else why not (checked in children)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            unshare(NAMESPACES)
            inner = os.fork()
            if inner == 0:
                try:
                    mount(None, "/", None, MS_REC | MS_PRIVATE)
                    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
                    os._exit(0 if os.getpid() == 1 else 3)
                except BaseException:
                    os._exit(2)
            code = os.waitstatus_to_exitcode(os.waitpid(inner, 0)[1])
        except BaseException:
            code = 1
        os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return {0: None, 1: "unshare(CLONE_NEWPID|CLONE_NEWNS|CLONE_NEWIPC) was refused",
            2: "mounting a private /proc was refused"}.get(code, f"probe failed ({code})")  # fmt: skip


def enter_private_mounts(mounts: Iterable[tuple[str, str]], proc: bool = True) -> None:
    """In a fresh mount namespace (as root): stop propagation to the host, bind each (source, target)
    with nosuid,nodev, and mount a /proc of the current PID namespace. Sources are opened first, so
    an earlier bind cannot hide a later source."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    opened = []
    try:
        for source, target in mounts:
            if os.path.isdir(target):  # e.g. no /run/lock on this host
                opened.append((os.open(source, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW), target))
        for fd, target in opened:
            mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
            mount(None, target, None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV)
    finally:
        for fd, _ in opened:
            os.close(fd)
    if proc:
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def check_paths(*paths: str) -> None:
    """Workspaces and their private directories must not live under a directory that each workspace
    gets a private copy of (they would be hidden from the workspace's own processes)."""
    for path in paths:
        real = os.path.realpath(path)
        for target in PRIVATE_DIRS.values():
            if real == target or real.startswith(target.rstrip("/") + "/"):
                raise ValueError(
                    f"{path} is under {target}, which every workspace gets a private copy of: "
                    "put workspaces_dir and tmp_dir elsewhere (e.g. /var/lib/sagews)"
                )


def private_mounts(base: str) -> list[tuple[str, str]]:
    """(source, target) pairs for a workspace whose private directories are under ``base``."""
    return [(os.path.join(base, name), target) for name, target in PRIVATE_DIRS.items()]


def init_loop(engine_pid: int) -> None:
    """PID 1 of a workspace's namespace: reap every process (orphans are reparented here) until the
    engine ends, then exit with its status (a signal ``s`` as exit code 128 + s). Never returns."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    code = 1
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == engine_pid:
            signalled = os.WIFSIGNALED(status)
            code = 128 + os.WTERMSIG(status) if signalled else min(os.WEXITSTATUS(status), 127)
            break
    with contextlib.suppress(Exception):
        os.kill(-1, signal.SIGKILL)  # from PID 1: everything else in the namespace
    os._exit(code)


def keeper_loop(init_pid: int) -> None:
    """The zygote's child in the worker's PID namespace: waits for the namespace's init and exits with
    its exit code; killed (by the worker), its init gets the parent-death signal. Never returns."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    while True:
        try:
            _, status = os.waitpid(init_pid, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            os._exit(1)
        break
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def decode_init_status(status: int) -> int:
    """The engine's wait status from its init's (``init_loop`` exit codes back to a signal death)."""
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) > 128:
        return os.WEXITSTATUS(status) - 128  # a raw wait status of "killed by signal s" is s
    return status
