"""Unprivileged Unix users for workspaces, and killing everything a workspace runs.

Each open workspace gets its own uid from a pool ``<prefix>1..N`` (created with useradd on first
use). The mapping is kept in ``state_dir/uids.json`` (root-only) so a workspace's checkout keeps
its owner across sessions; when the pool is exhausted, the least recently used workspace without
an open session gives its uid back (its checkout is chowned to root first).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

WORKSPACE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class PoolExhausted(RuntimeError):
    """Every pooled workspace user is in use by an open session."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


def ensure_user(name: str) -> Account:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        for attempt in range(5):  # /etc/passwd may be locked by another useradd for a moment
            proc = subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    "--user-group",
                    name,
                ],
                check=False,
                capture_output=True,
                timeout=30,
            )
            if proc.returncode in {0, 9}:  # 9: the name exists already (created concurrently)
                break
            if attempt == 4:
                raise RuntimeError(
                    f"useradd {name} failed: {proc.stderr.decode(errors='replace').strip()}"
                ) from None
            time.sleep(0.2 * (attempt + 1))
        pw = pwd.getpwnam(name)
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


def kill_uid(uid: int, timeout: float = 5.0) -> int:
    """SIGKILL every process of ``uid`` until none is left (fork bombs included). Returns rounds."""
    if uid == 0:
        raise ValueError("refusing to kill uid 0")
    deadline = time.monotonic() + timeout
    rounds = 0
    while True:
        pids = uid_pids(uid)
        if not pids or time.monotonic() > deadline:
            return rounds
        rounds += 1
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # RLIMIT_NPROC bounds a fork bomb's racing
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)  # let the kernel reap before rescanning (bounded by ``timeout``)


SHARED_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # noqa: S108 (world-writable: outside the quota)


def purge_uid_files(uid: int, dirs: tuple[str, ...] = SHARED_TMP_DIRS) -> int:
    """Remove what ``uid`` left at the top of the world-writable directories (its processes must be dead).
    Returns the number of entries removed."""
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
    """chown -hR without following symlinks."""
    os.lchown(path, uid, gid)
    for root, dirs, files in os.walk(path, followlinks=False):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


class UserPool:
    def __init__(self, state_dir: Path, prefix: str, size: int) -> None:
        self.path = state_dir / "uids.json"
        self.prefix = prefix
        self.size = size
        self.map: dict[str, dict[str, object]] = {}
        if self.path.exists():
            self.map = json.loads(self.path.read_text())

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.map, fh)
        os.replace(tmp, self.path)

    def account_for(self, workspace: str, workspace_dir: Path, busy: set[str]) -> Account:
        entry = self.map.get(workspace)
        if entry is not None:
            entry["used"] = time.time()
            self._save()
            account = ensure_user(str(entry["user"]))
            kill_uid(account.uid)  # leftovers of an earlier worker run: no session of it exists now
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
                chown_tree(old, 0, 0)
        account = ensure_user(name)
        kill_uid(account.uid)
        purge_uid_files(account.uid)
        self.map[workspace] = {"user": name, "used": time.time()}
        self._save()
        return account
