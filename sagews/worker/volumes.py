"""Disk quotas enforced by the kernel: one small ext4 filesystem (a sparse loop image) per workspace.

A workspace's checkout and its private /tmp, /var/tmp, /dev/shm, /run/lock live on its own
filesystem of ``disk_quota_mb`` with ``disk_inodes`` inodes, so a write past the quota fails with
ENOSPC in the kernel (no overshoot, nothing to measure) and an inode flood stops at the inode count.
Layout, for workspace W::

    state_dir/images/W.img            sparse image (root 0700 directory), created on first open
    workspaces_dir/.fs/W/             the image mounted (loop, nosuid, nodev, noatime)
    workspaces_dir/.fs/W/home         bound onto workspaces_dir/W: the checkout, as before
    workspaces_dir/.fs/W/tmp/<user>/  the private tmp, var-tmp, shm, lock (recreated each session)

Images stay mounted once opened until the worker stops (a reopen costs nothing); creating one
costs about 25 ms (mkfs) and mounting it about 20-35 ms here. Kernel user quotas would do the same
without one filesystem per workspace, but need quota-format support (CONFIG_QFMT_V2) that the
CI kernel lacks. Where loop devices are not available (unprivileged containers) the worker falls
back to measuring (``disk_quota = "auto"``): see docs/security.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("sagews.worker")


class VolumeError(RuntimeError):
    pass


def is_mountpoint(path: Path) -> bool:
    """Whether ``path`` is a mount point (os.path.ismount misses binds within one filesystem)."""
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as fh:
        return any(line.split()[4].replace("\\040", " ") == real for line in fh)


async def _run(*cmd: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise VolumeError(f"{cmd[0]} timed out") from None
    if proc.returncode:
        raise VolumeError(f"{' '.join(cmd[:2])} failed: {err.decode(errors='replace').strip()[:500]}")


class Volumes:
    def __init__(self, workspaces: Path, state: Path, size_mb: int, inodes: int) -> None:
        self.workspaces = workspaces
        self.images = state / "images"
        self.size_mb = size_mb
        self.inodes = inodes
        self.lock = asyncio.Lock()  # one mount/mkfs at a time (losetup picks free loop devices)

    def mountpoint(self, workspace: str) -> Path:
        return self.workspaces / ".fs" / workspace

    def _prepare(self) -> None:
        self.images.mkdir(mode=0o700, exist_ok=True)
        fs = self.workspaces / ".fs"
        fs.mkdir(mode=0o711, exist_ok=True)
        fs.chmod(0o711)  # traversable, not listable: checkouts below are 0700

    @staticmethod
    def _sparse(image: Path, size_mb: int) -> None:
        with open(image, "wb") as fh:  # sparse: costs only what is written
            fh.truncate(size_mb << 20)

    async def _mkfs(self, image: Path, size_mb: int, inodes: int) -> None:
        await asyncio.to_thread(self._sparse, image, size_mb)
        journal = ["-J", "size=4"] if size_mb >= 64 else ["-O", "^has_journal"]
        await _run(
            "mkfs.ext4", "-q", "-F", "-m", "0", "-N", str(inodes), *journal,
            "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=0:0", str(image),
        )  # fmt: skip

    @staticmethod
    def _after_mount(mp: Path) -> None:
        mp.chmod(0o711)  # its home and tmp are 0700, the workspace user's
        lost = mp / "lost+found"
        if lost.is_dir():
            os.rmdir(lost)  # empty on a fresh filesystem; would show in the checkout otherwise
        if not (mp / "home").is_dir():
            (mp / "home").mkdir(mode=0o700)  # the checkout: prepare_dir gives it to the workspace user
        (mp / "tmp").mkdir(mode=0o711, exist_ok=True)  # holds tmp/<user>/, the user's own (0700)
        (mp / "tmp").chmod(0o711)

    async def _mount(self, image: Path, mp: Path) -> None:
        await asyncio.to_thread(mp.mkdir, 0o711, False, True)
        await _run("mount", "-o", "loop,nosuid,nodev,noatime", str(image), str(mp))
        await asyncio.to_thread(self._after_mount, mp)

    async def share(self) -> None:
        """Make workspaces_dir a shared mount, so workspace filesystems mounted later reach the mount
        namespaces of engines forked earlier (the warm pool); each engine makes its copy private when
        it is assigned (isolation.enter_private_mounts)."""
        if not await asyncio.to_thread(is_mountpoint, self.workspaces):
            await _run("mount", "--bind", str(self.workspaces), str(self.workspaces))
        await _run("mount", "--make-shared", str(self.workspaces))

    @staticmethod
    def _cleanup_probe(image: Path, mp: Path) -> None:
        image.unlink(missing_ok=True)
        if mp.is_dir() and not is_mountpoint(mp):
            os.rmdir(mp)

    async def probe(self) -> str | None:
        """None if this host can create and mount workspace images, else why not."""
        await asyncio.to_thread(self._prepare)
        image, mp = self.images / ".probe.img", self.workspaces / ".fs" / ".probe"
        try:
            await self._mkfs(image, 4, 64)
            await self._mount(image, mp)
            await _run("umount", str(mp))
        except (VolumeError, OSError) as exc:
            return str(exc)
        finally:
            await asyncio.to_thread(self._cleanup_probe, image, mp)
        return None

    @staticmethod
    def _migrate(checkout: Path, home: Path) -> None:
        """A checkout from before images (or from measured mode): copy it onto its filesystem."""
        if checkout.is_dir() and any(checkout.iterdir()):
            shutil.copytree(checkout, home, symlinks=True, dirs_exist_ok=True)
            shutil.rmtree(checkout)
        checkout.mkdir(mode=0o700, exist_ok=True)

    async def attach(self, workspace: str, checkout: Path) -> Path:
        """Mount the workspace's filesystem (creating it on first use) and bind its ``home`` onto the
        checkout path; returns the directory for its private temporary directories."""
        mp = self.mountpoint(workspace)
        async with self.lock:
            if not await asyncio.to_thread(is_mountpoint, mp):
                image = self.images / f"{workspace}.img"
                if not await asyncio.to_thread(image.exists):
                    await self._mkfs(image, self.size_mb, self.inodes)
                await self._mount(image, mp)
            if not await asyncio.to_thread(is_mountpoint, checkout):
                await asyncio.to_thread(self._migrate, checkout, mp / "home")
                await _run("mount", "--bind", str(mp / "home"), str(checkout))
        return mp / "tmp"

    def usage(self, workspace: str) -> tuple[int, int, int, int]:
        """(bytes used, bytes free, inodes used, inodes free) of the workspace's filesystem."""
        st = os.statvfs(self.mountpoint(workspace))
        return (
            (st.f_blocks - st.f_bfree) * st.f_frsize,
            st.f_bavail * st.f_frsize,
            st.f_files - st.f_ffree,
            st.f_favail,
        )

    def _mounted(self) -> list[Path]:
        """Every mount of ours under workspaces_dir, innermost first."""
        fs = self.workspaces / ".fs"
        found = []
        if fs.is_dir():
            for mp in sorted(fs.iterdir()):
                found += [t for t in (self.workspaces / mp.name, mp) if is_mountpoint(t)]
        if is_mountpoint(self.workspaces):
            found.append(self.workspaces)
        return found

    async def detach_all(self) -> None:
        """Unmount every workspace filesystem (worker shutdown; their processes are gone)."""
        for target in await asyncio.to_thread(self._mounted):
            try:
                await _run("umount", str(target))
            except VolumeError as exc:
                log.warning("could not unmount %s: %s", target, exc)
