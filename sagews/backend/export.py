"""Downloads of a workspace's last save, built from its stored bundles (no worker involved).

The newest chain is fetched into a scratch bare repository with ``git`` (an asyncio subprocess, never
blocking the IOLoop; hooks disabled), then ``git bundle create --all`` (one self-contained bundle) or
``git archive --format=zip`` (the files at the saved head). The same single bundle replaces a long
chain in the DB (repack, see ``Workspaces.repack``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "HOME": "/nonexistent",
}


class ExportError(Exception):
    pass


async def _git(cwd: Path, *args: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        "git",
        "-c",
        "core.hooksPath=/dev/null",
        *args,
        cwd=cwd,
        env=GIT_ENV,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise ExportError(f"git {args[0]} failed: {err.decode(errors='replace')[-500:]}")
    return out


async def export(chain: list[bytes], fmt: str) -> bytes:
    """``fmt``: ``bundle`` or ``zip``. ``chain``: base bundle first."""
    if not chain:
        raise ExportError("nothing saved yet")
    tmp = Path(tempfile.mkdtemp(prefix="sagews-export-"))
    try:
        repo = tmp / "repo.git"
        await _git(tmp, "init", "-q", "--bare", str(repo))
        for i, data in enumerate(chain):
            path = tmp / f"{i}.bundle"
            path.write_bytes(data)
            await _git(repo, "fetch", "-q", str(path), "+HEAD:refs/heads/sagews-head")
        await _git(repo, "symbolic-ref", "HEAD", "refs/heads/sagews-head")
        if fmt == "bundle":  # HEAD: what the worker's restore fetches, and what `git clone` checks out
            await _git(repo, "bundle", "create", "-q", str(tmp / "all.bundle"), "HEAD")
            return (tmp / "all.bundle").read_bytes()
        return await _git(repo, "archive", "--format=zip", "refs/heads/sagews-head")
    finally:
        await asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, tmp, True)
