"""Unprivileged Unix users for workspaces, and killing everything a workspace runs.

Each open workspace gets its own uid from a pool ``<prefix>1..N`` with the fixed uids
``uid_base .. uid_base+N-1`` (created with useradd on first use), so host firewall rules can
match the whole pool by uid range (``meta skuid``, see docs/security.md). The mapping is kept in
``state_dir/uids.json`` (root-only) so a workspace's checkout keeps its owner across sessions;
when the pool is exhausted, the least recently used workspace without an open session gives its
uid back (its checkout is chowned to root first).

Nothing here blocks the event loop: useradd runs as an async subprocess, /proc scans, chowns and
file removals run in the default executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

WORKSPACE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
log = logging.getLogger("sagews.worker")


class PoolExhausted(RuntimeError):
    """Every pooled workspace user is in use by an open session (or the owner's share is)."""


class UidConflict(RuntimeError):
    """A uid of the configured range belongs to a user that is not one of ours."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


def _lookup(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


async def _run(*cmd: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"{cmd[0]} timed out"
    return proc.returncode or 0, err.decode(errors="replace").strip()


async def _ensure_group(name: str, gid: int) -> None:
    """The group ``name`` with gid ``gid``, created if missing (a group of that name with another gid,
    left by an older configuration, is kept: the user's uid is what confinement keys on)."""
    for attempt in range(5):  # /etc/group may be locked by another groupadd for a moment
        code, err = await _run("groupadd", "--system", "--gid", str(gid), name)
        if code in {0, 9}:  # 9: the name exists already
            return
        if code == 4:  # gid in use by a group that is not ours
            raise UidConflict(f"groupadd {name}: gid {gid} is taken: {err}")
        if attempt == 4:
            raise RuntimeError(f"groupadd {name} failed: {err}")
        await asyncio.sleep(0.2 * (attempt + 1))


async def ensure_user(name: str, uid: int | None = None) -> Account:
    """The pool user ``name`` (with uid ``uid`` when given), created if missing. A pool user left
    with another uid (an older configuration) is removed and created again with the right one."""
    pw = await asyncio.to_thread(_lookup, name)
    if pw is not None and uid is not None and pw.pw_uid != uid:
        log.warning("pool user %s has uid %d, configured %d: recreating it", name, pw.pw_uid, uid)
        await kill_uid(pw.pw_uid)
        code, err = await _run("userdel", name)
        if code not in {0, 6}:  # 6: no such user (removed concurrently)
            raise RuntimeError(f"userdel {name} failed: {err}")
        pw = None
    if pw is None:
        # A fixed uid gets the group of the same number: useradd --user-group would take a gid from the
        # system range (100-999), which a few hundred pool users exhaust ("no more available GIDs").
        extra = ["--user-group"]
        if uid is not None:
            await _ensure_group(name, uid)
            extra = ["--uid", str(uid), "--gid", name, "--no-user-group"]
        for attempt in range(5):  # /etc/passwd may be locked by another useradd for a moment
            code, err = await _run(
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                *extra,
                name,
            )
            if code in {0, 9}:  # 9: the name exists already (created concurrently)
                break
            if code == 4:  # uid already in use (by a user that is not ours)
                raise UidConflict(f"useradd {name}: uid {uid} is taken: {err}")
            if attempt == 4:
                raise RuntimeError(f"useradd {name} failed: {err}")
            await asyncio.sleep(0.2 * (attempt + 1))
        pw = await asyncio.to_thread(pwd.getpwnam, name)
    return Account(name, pw.pw_uid, pw.pw_gid)


def uid_pids(uid: int) -> list[int]:
    """Processes whose real or effective uid is ``uid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as fh:
                for line in fh:
                    if line.startswith(b"Uid:"):
                        ids = [int(x) for x in line.split()[1:3]]
                        if uid in ids:
                            pids.append(int(entry))
                        break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return pids


def _kill_pids(uid: int) -> int:
    pids = uid_pids(uid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # RLIMIT_NPROC bounds a fork bomb's racing
            os.kill(pid, signal.SIGKILL)
    return len(pids)


async def kill_uid(uid: int, within: float = 5.0) -> int:
    """SIGKILL every process of ``uid`` until none is left (fork bombs included). Returns rounds.

    The /proc scans run in the executor; between rounds the event loop is free. Engines live in
    their own PID namespace (killing its init kills all of it), so this is the safety net for
    processes of an earlier worker run and for hosts without namespaces."""
    if uid == 0:
        raise ValueError("refusing to kill uid 0")
    deadline = time.monotonic() + within
    rounds = 0
    while time.monotonic() <= deadline:
        if not await asyncio.to_thread(_kill_pids, uid):
            break
        rounds += 1
        await asyncio.sleep(0.005)  # let the kernel reap before rescanning
    return rounds


SHARED_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # noqa: S108 (world-writable: outside the quota)


def purge_uid_files(uid: int, dirs: tuple[str, ...] = SHARED_TMP_DIRS) -> int:
    """Remove what ``uid`` left at the top of the host's world-writable directories (its processes
    must be dead). Engines see private ones (mount namespace); this covers hosts without namespaces.
    Blocking: call it in an executor. Returns the number of entries removed."""
    if uid == 0:
        raise ValueError("refusing to purge uid 0")
    removed = 0
    for d in dirs:
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
                if st.st_uid != uid:
                    continue
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path)  # fd-based, does not follow symlinks
                else:
                    os.unlink(e.path)
                removed += 1
            except OSError:
                continue
    return removed


def chown_tree(path: Path, uid: int, gid: int) -> None:
    """chown -hR without following symlinks (blocking: call it in an executor)."""
    os.lchown(path, uid, gid)
    for root, dirs, files in os.walk(path, followlinks=False):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


class UserPool:
    """Workspace -> pool user. ``account_for`` is serialised by a lock (one assignment at a time)."""

    def __init__(self, state_dir: Path, prefix: str, size: int, uid_base: int | None = None) -> None:
        self.path = state_dir / "uids.json"
        self.prefix = prefix
        self.size = size
        self.uid_base = uid_base or None
        self.map: dict[str, dict[str, object]] = {}
        self.lock = asyncio.Lock()
        if self.path.exists():
            self.map = json.loads(self.path.read_text())

    def uid_of(self, name: str) -> int | None:
        if self.uid_base is None:
            return None
        return self.uid_base + int(name[len(self.prefix) :]) - 1

    def check_range(self) -> None:
        """Refuse a uid range that other users occupy (startup, blocking)."""
        if self.uid_base is None:
            return
        for i in range(1, self.size + 1):
            uid = self.uid_base + i - 1
            try:
                other = pwd.getpwuid(uid).pw_name
            except KeyError:
                continue
            if other != f"{self.prefix}{i}" and not re.fullmatch(re.escape(self.prefix) + r"\d+", other):
                raise UidConflict(
                    f"uid {uid} of the workspace range {self.uid_base}..{self.uid_base + self.size - 1} "
                    f"belongs to {other!r}: choose another uid_base"
                )

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.map, fh)
        os.replace(tmp, self.path)

    def free(self, busy: set[str]) -> int:
        """Users that could be handed out now (never used, or held by a workspace without a session)."""
        return self.size - sum(1 for w in self.map if w in busy)

    async def account_for(self, workspace: str, workspace_dir: Path, busy: set[str]) -> Account:
        async with self.lock:
            return await self._account_for(workspace, workspace_dir, busy)

    async def _account_for(self, workspace: str, workspace_dir: Path, busy: set[str]) -> Account:
        entry = self.map.get(workspace)
        if entry is not None:
            entry["used"] = time.time()
            await asyncio.to_thread(self._save)
            name = str(entry["user"])
            account = await ensure_user(name, self.uid_of(name))
            await kill_uid(account.uid)  # leftovers of an earlier worker run: no session of it exists now
            return account
        taken = {str(e["user"]) for e in self.map.values()}
        name = next(
            (f"{self.prefix}{i}" for i in range(1, self.size + 1) if f"{self.prefix}{i}" not in taken), None
        )
        if name is None:
            idle = [w for w in self.map if w not in busy]
            if not idle:
                raise PoolExhausted("no free workspace user: every pooled uid has an open session")
            victim = min(idle, key=lambda w: float(self.map[w]["used"]))  # type: ignore[arg-type]
            name = str(self.map.pop(victim)["user"])
            old = workspace_dir.parent / victim
            if old.exists():
                await asyncio.to_thread(chown_tree, old, 0, 0)
        account = await ensure_user(name, self.uid_of(name))
        await kill_uid(account.uid)
        await asyncio.to_thread(purge_uid_files, account.uid)
        self.map[workspace] = {"user": name, "used": time.time()}
        await asyncio.to_thread(self._save)
        return account
