"""Workspace file and git operations, run as the workspace's own uid in a short-lived fork.

Every operation runs in a child forked from the server that first closes every inherited file
descriptor but its result pipe, drops to the workspace uid (it becomes non-dumpable, so other
processes of that uid cannot read its memory), chdirs into the checkout and applies the file-size
limit. Paths are checked lexically (no absolute paths, no ``..``) and after resolving symlinks
(must stay inside the checkout); since the check runs as the workspace uid, even a symlink swapped
in after the check only reaches what that uid may read anyway.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sagews.worker import isolation
from sagews.worker.pipes import PipeReader, write_all
from sagews.worker.users import Account

if TYPE_CHECKING:
    from sagews.worker.forker import Forker


class OpError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Set by the server from its config (the fork inherits it): rlimits for operation helpers.
HELPER_LIMITS: dict[str, int] = {"processes": 0, "address_space": 0, "cpu": 0, "open_files": 0}

HELPER_NICE = 5
COMMIT_RE = re.compile(r"^[0-9A-Za-z_][0-9A-Za-z_./~^@{}-]{0,199}$")  # a revision, never an option

# Who saved, as git's author name: an account name (the backend checks names; this bounds what reaches git).
AUTHOR_RE = re.compile(r"[A-Za-z0-9_.@+-]{1,64}\Z")
GIT_FLAGS = ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "commit.gpgSign=false"]


def _git_env(tmp: str, author: str = "sagews") -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": tmp,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": author,
        "GIT_AUTHOR_EMAIL": "sagews@localhost",
        "GIT_COMMITTER_NAME": "sagews",
        "GIT_COMMITTER_EMAIL": "sagews@localhost",
        "LC_ALL": "C",
    }


def git(
    *args: str,
    tmp: str = "/tmp",  # noqa: S108
    check: bool = True,
    timeout: float = 60,
    author: str = "sagews",
) -> bytes:
    env = _git_env(tmp, author)
    argv = ["git", *GIT_FLAGS, *args]
    proc = subprocess.run(argv, capture_output=True, env=env, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise OpError("git", f"git {args[0]} failed: {proc.stderr.decode(errors='replace').strip()[:2000]}")
    return proc.stdout


def confine(path: object, root: str, *, allow_root: bool = False, writing: bool = False) -> str:
    """A path relative to ``root`` that stays inside it, or OpError('path_refused')."""
    if not isinstance(path, str) or "\x00" in path:
        raise OpError("bad_field", "path must be a string")
    if path.startswith("/"):
        raise OpError("path_refused", f"absolute paths are refused: {path!r}")
    parts = [p for p in path.split("/") if p not in {"", "."}]
    if ".." in parts:
        raise OpError("path_refused", f"'..' is refused: {path!r}")
    if not parts and not allow_root:
        raise OpError("path_refused", "a file path is required")
    if writing and parts and parts[0] == ".git":
        raise OpError("path_refused", "the .git directory is managed by the worker")
    rel = "/".join(parts) or "."
    parent = os.path.realpath(os.path.join(root, os.path.dirname(rel)))
    if parent != root and not parent.startswith(root + "/"):
        raise OpError("path_refused", f"{path!r} leads outside the workspace (symlink)")
    full = os.path.join(root, rel)
    if os.path.islink(full) and not writing:
        target = os.path.realpath(full)
        if target != root and not target.startswith(root + "/"):
            raise OpError("path_refused", f"{path!r} is a symlink out of the workspace")
    return rel


def _ls(root: str, a: dict[str, Any], tmp: str) -> dict[str, Any]:
    rel = confine(a.get("path", "."), root, allow_root=True)
    staged = a.get("_staged")
    if isinstance(staged, dict) and os.path.isdir(os.path.join(STAGING, ".git")):
        return _staged_ls(rel, staged, tmp)
    entries = []
    try:
        with os.scandir(rel) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                kind = "dir" if stat.S_ISDIR(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode) else "file"
                entries.append({"name": e.name, "type": kind, "size": st.st_size, "mtime": st.st_mtime})
    except FileNotFoundError:
        raise OpError("not_found", f"no such directory: {rel}") from None
    except NotADirectoryError:
        raise OpError("bad_field", f"not a directory: {rel}") from None
    entries.sort(key=lambda e: e["name"])
    return {"path": rel, "entries": entries}


def _encode_content(data: bytes) -> dict[str, Any]:
    try:
        return {"text": data.decode("utf-8"), "size": len(data)}
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(data).decode(), "size": len(data)}


def _read(root: str, a: dict[str, Any], tmp: str, max_bytes: int) -> dict[str, Any]:
    rel = confine(a.get("path"), root)
    commit = a.get("commit")
    staged = a.get("_staged")
    repo = "."
    if isinstance(staged, dict) and os.path.isdir(os.path.join(STAGING, ".git")):
        repo = STAGING  # a restore's files are being checked out: its repository has every commit
        commit = staged["commit"] if commit is None else commit
    if commit is not None:
        if not isinstance(commit, str) or not COMMIT_RE.match(commit):
            raise OpError("bad_field", "commit must be a commit id")
        proc = subprocess.run(
            ["git", *GIT_FLAGS, "-C", repo, "show", f"{commit}:{rel}"],
            capture_output=True,
            env=_git_env(tmp),
            timeout=60,
            check=False,
        )
        if proc.returncode != 0:
            raise OpError("not_found", f"{rel} not found at {commit}")
        data = proc.stdout
    else:
        try:
            fd = os.open(rel, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise OpError("not_found", f"no such file: {rel}") from None
        except OSError as exc:
            raise OpError("path_refused" if os.path.islink(rel) else "io", f"{rel}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OpError("bad_field", f"not a regular file: {rel}")
            data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OpError("too_large", f"{rel} is larger than {max_bytes} bytes; read it in pieces from code")
    return {"path": rel, **_encode_content(data)}


def _write(root: str, a: dict[str, Any]) -> dict[str, Any]:
    rel = confine(a.get("path"), root, writing=True)
    if isinstance(a.get("text"), str):
        data = a["text"].encode()
    elif isinstance(a.get("b64"), str):
        try:
            data = base64.b64decode(a["b64"], validate=True)
        except ValueError:
            raise OpError("bad_field", "b64 is not valid base64") from None
    else:
        raise OpError("bad_field", "write needs 'text' (string) or 'b64' (base64 string)")
    parent = os.path.dirname(rel)
    if parent:
        os.makedirs(parent, exist_ok=True)
        confine(rel, root, writing=True)  # re-check after creating directories
    try:
        fd = os.open(rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise OpError("path_refused" if os.path.islink(rel) else "io", f"{rel}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as fh:
        try:
            fh.write(data)
            fh.flush()
        except OSError as exc:
            raise OpError("quota", f"{rel}: {exc.strerror} (file size limit or disk quota)") from None
    return {"path": rel, "size": len(data)}


def _rename(root: str, a: dict[str, Any]) -> dict[str, Any]:
    src = confine(a.get("src"), root, writing=True)
    dst = confine(a.get("dst"), root, writing=True)
    if not os.path.lexists(src):
        raise OpError("not_found", f"no such file: {src}")
    if os.path.dirname(dst):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.rename(src, dst)
    return {"src": src, "dst": dst}


def _delete(root: str, a: dict[str, Any]) -> dict[str, Any]:
    rel = confine(a.get("path"), root, writing=True)
    if not os.path.lexists(rel):
        raise OpError("not_found", f"no such file: {rel}")
    if os.path.isdir(rel) and not os.path.islink(rel):
        shutil.rmtree(rel)
    else:
        os.unlink(rel)
    return {"path": rel}


def disk_usage(*roots: str) -> tuple[int, int]:
    """(bytes allocated, inodes) of the trees under ``roots`` (symlinks not followed)."""
    total = inodes = 0
    for top in roots:
        for dirpath, dirs, files in os.walk(top, followlinks=False):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
                    inodes += 1
    return total, inodes


def _init(root: str, tmp: str) -> None:
    if not os.path.isdir(".git"):
        git("init", "-q", "-b", "main", tmp=tmp)


def _clear_stale_locks() -> list[str]:
    """Remove git lock files left by a git that was killed (a worker restart during a save): saves of a
    session run one at a time (its git lock), so a lock seen here belongs to no running save."""
    removed = []
    candidates = [
        os.path.join(".git", n) for n in ("index.lock", "HEAD.lock", "config.lock", "packed-refs.lock")
    ]
    for dirpath, _dirs, files in os.walk(os.path.join(".git", "refs")):
        candidates += [os.path.join(dirpath, f) for f in files if f.endswith(".lock")]
    for path in candidates:
        with contextlib.suppress(FileNotFoundError):
            if os.path.isfile(path) or os.path.islink(path):
                os.unlink(path)
                removed.append(path)
    return removed


def _save(root: str, a: dict[str, Any], tmp: str) -> dict[str, Any]:
    _init(root, tmp)
    _clear_stale_locks()
    git("add", "-A", tmp=tmp)
    message = a.get("message") if isinstance(a.get("message"), str) and a.get("message") else "save"
    author = a.get("author")
    if not (isinstance(author, str) and AUTHOR_RE.match(author)):
        author = "sagews"  # a checkpoint (worker shutdown, drain) or an older backend
    coauthors = [c for c in a.get("coauthors") or [] if isinstance(c, str) and AUTHOR_RE.match(c)]
    if coauthors and author != "sagews":  # git's trailer convention (GitHub and GitLab show them)
        message = str(message) + "\n\n" + "\n".join(f"Co-authored-by: {c} <{c}@sagews>" for c in coauthors)
    if git("status", "--porcelain", tmp=tmp).strip():
        git("commit", "-q", "-m", str(message), tmp=tmp, author=author)
    head = git("rev-parse", "-q", "--verify", "HEAD", tmp=tmp, check=False).decode().strip()
    if not head:
        raise OpError("nothing_to_save", "the workspace has no files to save yet")
    last = a.get("last")
    if last == head:
        return {"commit": head, "bundle": None}
    known = (
        isinstance(last, str)
        and subprocess.run(
            ["git", "cat-file", "-e", f"{last}^{{commit}}"],
            capture_output=True,
            env=_git_env(tmp),
            check=False,
        ).returncode
        == 0
    )
    if known:
        rng = [f"{last}..HEAD"]
    else:
        last, rng = None, ["HEAD"]
    path = os.path.join(tmp, "save.bundle")
    git("bundle", "create", "-q", path, *rng, tmp=tmp)
    with open(path, "rb") as fh:
        data = fh.read()
    os.unlink(path)
    return {"commit": head, "base": last is None, "bundle": base64.b64encode(data).decode()}


STAGING = ".sagews-restore"


def _clear(keep: str | None = None) -> None:
    for name in os.listdir("."):
        if name == keep:
            continue
        if os.path.isdir(name) and not os.path.islink(name):
            shutil.rmtree(name)
        else:
            os.unlink(name)


# Restores write a staging repository that the stored bundles can rebuild at any time: git's fsyncs of
# the packs it indexes buy nothing there (checkout files are never fsynced either). Parallel checkout
# is capped at 2 processes (RLIMIT_NPROC is per workspace uid).
RESTORE_FLAGS = ["-c", "core.fsync=none", "-c", "checkout.workers=2"]


def _unbundle(data: bytes, i: int, tmp: str) -> str:
    """Index one bundle's pack into the repository (its prerequisites must be present: git checks);
    returns the commit of its ``HEAD`` ref. The bundle is piped in, never written to a file."""
    proc = subprocess.run(
        ["git", *GIT_FLAGS, *RESTORE_FLAGS, "bundle", "unbundle", "/dev/stdin"],
        input=data,
        capture_output=True,
        env=_git_env(tmp),
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise OpError(
            "bad_bundle", f"bundle {i} does not apply: {proc.stderr.decode(errors='replace')[:500]}"
        )
    for line in proc.stdout.decode(errors="replace").splitlines():
        oid, _, ref = line.partition(" ")
        if ref == "HEAD" and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", oid):
            return oid
    raise OpError("bad_bundle", f"bundle {i} has no HEAD ref")


def _restore(root: str, a: dict[str, Any], tmp: str) -> dict[str, Any]:
    """Rebuild the repository from bundles in a staging directory; the checkout is replaced only if
    every bundle applied (a bad restore leaves the workspace as it was).

    Each bundle's pack is indexed as it is (``git bundle unbundle``: no fetch negotiation, no loose
    objects, prerequisites checked), then the last bundle's head is checked out once. ``phase``:
    "objects" stops after the objects and refs (the staging repository can answer ``ls`` and
    ``read``), "checkout" checks them out in the staging directory, "swap" puts that in place of
    the workspace's files; "all" (default) does the three."""
    phase = a.get("phase", "all")
    if phase not in {"all", "objects", "checkout", "swap"}:
        raise OpError("bad_field", "phase must be 'all', 'objects', 'checkout' or 'swap'")
    if phase in {"checkout", "swap"}:
        if not os.path.isdir(os.path.join(STAGING, ".git")):
            raise OpError("not_found", "no staged restore")
        return _restore_checkout(root, tmp) if phase == "checkout" else _restore_swap()
    bundles = a.get("bundles")
    if not isinstance(bundles, list) or not bundles or not all(isinstance(b, str) for b in bundles):
        raise OpError("bad_field", "bundles must be a non-empty list of base64 strings, base first")
    if os.path.lexists(STAGING):
        shutil.rmtree(STAGING) if os.path.isdir(STAGING) and not os.path.islink(STAGING) else os.unlink(
            STAGING
        )
    os.mkdir(STAGING, 0o700)
    try:
        os.chdir(STAGING)
        git("init", "-q", "-b", "main", "--template=", tmp=tmp)  # no sample hooks: fewer files to create
        head = ""
        for i, b64 in enumerate(bundles):
            try:
                data = base64.b64decode(b64, validate=True)
            except ValueError:
                raise OpError("bad_field", f"bundle {i} is not valid base64") from None
            head = _unbundle(data, i, tmp)
        # a fresh repository: its branch ref is a plain file (no git process: ~5 ms on a cold open)
        with open(os.path.join(".git", "refs", "heads", "main"), "w") as fh:
            fh.write(head + "\n")
        when = time.time()  # shown as the files' mtime while they are being checked out
    except BaseException:
        os.chdir(root)
        shutil.rmtree(STAGING, ignore_errors=True)
        raise
    os.chdir(root)
    if phase == "objects":
        return {"commit": head, "time": when}
    res = _restore_checkout(root, tmp)
    _restore_swap()
    return {**res, "time": when}


def _restore_checkout(root: str, tmp: str) -> dict[str, Any]:
    """Check the staged head out in the staging directory (the workspace is not touched yet)."""
    try:
        os.chdir(STAGING)
        git(*RESTORE_FLAGS, "reset", "-q", "--hard", "main", tmp=tmp)
        head = git("rev-parse", "HEAD", tmp=tmp).decode().strip()
    except BaseException:
        os.chdir(root)
        shutil.rmtree(STAGING, ignore_errors=True)
        raise
    os.chdir(root)
    return {"commit": head}


def _restore_swap() -> dict[str, Any]:
    """Replace the workspace's files with the checked out staging directory."""
    _clear(keep=STAGING)
    for name in os.listdir(STAGING):
        os.rename(os.path.join(STAGING, name), name)
    os.rmdir(STAGING)
    return {}


def _staged_ls(rel: str, staged: dict[str, Any], tmp: str) -> dict[str, Any]:
    """``ls`` answered from the staged commit while its files are being checked out."""
    commit, when = str(staged["commit"]), float(staged.get("time", 0))
    spec = commit if rel == "." else f"{commit}:{rel}"
    proc = subprocess.run(
        ["git", *GIT_FLAGS, "-C", STAGING, "ls-tree", "-l", "-z", spec],
        capture_output=True, env=_git_env(tmp), timeout=60, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise OpError("not_found", f"no such directory: {rel}")
    entries = [{"name": ".git", "type": "dir", "size": 4096, "mtime": when}] if rel == "." else []
    for item in proc.stdout.split(b"\0"):
        if not item:
            continue
        meta, _, name = item.partition(b"\t")
        mode, kind, _oid, size = meta.split(None, 3)
        if kind == b"blob" and mode == b"120000":
            etype = "link"
        elif kind == b"blob":
            etype = "file"
        else:
            etype = "dir"
        entries.append({"name": name.decode("utf-8", "surrogateescape"), "type": etype,
                        "size": int(size) if size.strip().isdigit() else 4096, "mtime": when})  # fmt: skip
    entries.sort(key=lambda e: e["name"])
    return {"path": rel, "entries": entries}


def _history(root: str, a: dict[str, Any], tmp: str) -> dict[str, Any]:
    limit = a.get("limit", 100)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise OpError("bad_field", "limit must be a positive integer")
    if not os.path.isdir(".git") or not git("rev-parse", "-q", "--verify", "HEAD", tmp=tmp, check=False):
        return {"commits": []}
    fmt = "--format=%H%x1f%an%x1f%aI%x1f%s%x1f%(trailers:key=Co-authored-by,valueonly,separator=%x1d)%x1e"
    out = git("log", f"-n{min(limit, 10_000)}", fmt, tmp=tmp).decode()
    commits = []
    for record in out.split("\x1e"):
        line = record.strip("\n")
        if not line:
            continue
        h, author, date, subject, trailers = line.split("\x1f", 4)
        c: dict[str, Any] = {"commit": h, "author": author, "date": date, "message": subject}
        names = [t.split(" <", 1)[0].strip() for t in trailers.split("\x1d") if t.strip()]
        if names:
            c["coauthors"] = names  # Co-authored-by trailers: the others who edited in this save
        commits.append(c)
    return {"commits": commits}


def dispatch(op: str, root: str, args: dict[str, Any], tmp: str, max_bytes: int) -> dict[str, Any]:
    if op == "ls":
        return _ls(root, args, tmp)
    if op == "read":
        return _read(root, args, tmp, max_bytes)
    if op == "write":
        return _write(root, args)
    if op == "rename":
        return _rename(root, args)
    if op == "delete":
        return _delete(root, args)
    if op == "du":
        used, inodes = disk_usage(root, tmp)
        return {"bytes": used, "inodes": inodes}
    if op == "save":
        return _save(root, args, tmp)
    if op == "restore":
        return _restore(root, args, tmp)
    if op == "history":
        return _history(root, args, tmp)
    if op == "init":
        _init(root, tmp)
        return {}
    raise OpError("unknown_type", op)


def _child(  # noqa: PLR0917
    wfd: int,
    account: Account,
    root: str,
    tmp: str,
    op: str,
    args: dict[str, Any],
    fsize: int,
    max_bytes: int,
    mounts: list[tuple[str, str]] | None,
) -> None:
    try:
        os.dup2(wfd, 3)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(4, 65536)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        _prctl_pdeathsig()
        os.nice(HELPER_NICE)  # below the worker (heartbeats) and the engines (executions)
        if mounts is not None:
            # like an engine: own PID/mount/IPC namespaces (whatever git filters start dies with us)
            isolation.unshare(isolation.NAMESPACES)
            inner = os.fork()
            if inner:
                os.close(3)
                isolation.keeper_loop(inner)
            _prctl_pdeathsig()
            isolation.enter_private_mounts(mounts)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        # git may run commands the workspace controls (.gitattributes filters): same caps as user code
        for res, value in (
            (resource.RLIMIT_NPROC, HELPER_LIMITS["processes"]),
            (resource.RLIMIT_AS, HELPER_LIMITS["address_space"]),
            (resource.RLIMIT_CPU, HELPER_LIMITS["cpu"]),
            (resource.RLIMIT_NOFILE, HELPER_LIMITS["open_files"]),
        ):
            if value:
                resource.setrlimit(res, (value, value))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.setgroups([])
        os.setresgid(account.gid, account.gid, account.gid)
        os.setresuid(account.uid, account.uid, account.uid)
        os.umask(0o077)
        os.chdir(root)
        try:
            result: dict[str, Any] = {"ok": dispatch(op, root, args, tmp, max_bytes)}
        except OpError as exc:
            result = {"error": exc.code, "message": exc.message}
        except subprocess.TimeoutExpired:
            result = {"error": "timeout", "message": "the git command timed out"}
        except OSError as exc:
            result = {"error": "io", "message": f"{exc.strerror}: {exc.filename or ''}"}
        except (ValueError, TypeError) as exc:
            result = {"error": "bad_field", "message": f"{type(exc).__name__}: {exc}"[:500]}
        except Exception as exc:  # reported, never silent
            result = {"error": "internal", "message": f"{type(exc).__name__}: {exc}"[:500]}
        data = json.dumps(result).encode()
        with os.fdopen(3, "wb") as fh:
            fh.write(data)
    except BaseException:
        os._exit(1)
    os._exit(0)


async def run_as(
    account: Account,
    root: Path,
    tmp: Path,
    op: str,
    args: dict[str, Any],
    *,
    fsize: int,
    max_bytes: int,
    forker: Forker,
    limit_seconds: float = 120,
    mounts: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """Run workspace operation ``op`` as ``account`` in ``root``; returns its result or raises OpError.
    The helper is forked by the forker process (sagews/worker/forker.py), not by the worker: its
    arguments go through a pipe, its answer comes back through another. With ``mounts`` (isolation
    on), the helper gets its own namespaces and those private mounts."""
    rfd, wfd = os.pipe()
    ard, awr = os.pipe()
    try:
        await forker.fork(ard, wfd, limit_seconds)
    except BaseException:
        for fd in (rfd, awr):
            os.close(fd)
        raise
    request = {
        "account": [account.name, account.uid, account.gid],
        "root": str(root),
        "tmp": str(tmp),
        "op": op,
        "args": args,
        "fsize": fsize,
        "max_bytes": max_bytes,
        "mounts": mounts,
        "helper_limits": HELPER_LIMITS,
    }
    # both pipe ends stay ours, each closed once here (not pipe transports: sagews/worker/pipes.py)
    result: PipeReader | None = None
    try:
        result = PipeReader(rfd, limit=1 << 30)  # owns rfd from here on
        async with asyncio.timeout(limit_seconds + 5):  # the helper has an alarm itself
            await write_all(awr, json.dumps(request).encode())
            os.close(awr)  # the child reads to EOF
            awr = -1
            data = await result.reader.read()
    except TimeoutError:
        data = b""
    finally:
        if awr >= 0:
            os.close(awr)
        if result is not None:
            result.close()
        else:
            os.close(rfd)
    if not data:
        raise OpError("internal", f"workspace operation {op} ended without an answer (killed?)")
    result = json.loads(data)
    if "error" in result:
        raise OpError(result["error"], result["message"])
    ok: dict[str, Any] = result["ok"]
    return ok


def _prctl_pdeathsig() -> None:
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def prepare_dir(path: Path, account: Account) -> None:
    """The checkout directory: 0700, owned by the workspace uid (chowned if it changed owner)."""
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.lstat()
    if st.st_uid != account.uid or st.st_gid != account.gid:
        from sagews.worker.users import chown_tree

        chown_tree(path, account.uid, account.gid)
    os.chmod(path, 0o700)


def private_tmp(base: Path, account: Account) -> Path:
    """A fresh per-uid directory holding the workspace's private ``tmp``, ``var-tmp``, ``shm`` and
    ``lock`` (bound over /tmp, /var/tmp, /dev/shm and /run/lock in its mount namespace; TMPDIR,
    DOT_SAGE and MPLCONFIGDIR point into ``tmp``). Owned by the workspace user, so what is written
    there counts in its quota; removed when the session closes (blocking: call it in an executor)."""
    from sagews.worker.isolation import PRIVATE_DIRS

    path = base / account.name
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    os.chown(path, account.uid, account.gid)
    for name in PRIVATE_DIRS:
        (path / name).mkdir(mode=0o700)
        os.chown(path / name, account.uid, account.gid)
    return path
