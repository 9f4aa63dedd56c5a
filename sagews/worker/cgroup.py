"""Optional per-workspace cgroup v2 limits (config ``cgroup = true``).

rlimits cap virtual memory per process and processes per uid; a cgroup caps what a workspace really
uses: resident memory (``memory.max``, swap off) and tasks (``pids.max``) for the engine and everything
it starts, and lets the worker kill all of it at once (``cgroup.kill``).

``cgroup_root`` must be a cgroup v2 directory delegated to the worker, with the ``memory`` and ``pids``
controllers available: e.g. run the worker as a systemd service with ``Delegate=yes`` and point
``cgroup_root`` at a child of the service's own cgroup (the worker itself must not live in it: cgroup
v2 allows no processes in a cgroup that has controllers enabled for children). Session and CI machines
here have cgroup v1 and no systemd as PID 1, so the default is off and rlimits are used alone; this
module's logic is tested against a stand-in directory, the kernel behaviour only on cgroup v2 hosts.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


class CgroupError(RuntimeError):
    pass


def delegated_root(self_cgroup: str = "/proc/self/cgroup", mount: str = "/sys/fs/cgroup") -> Path:
    """``cgroup_root = "auto"``: the subtree systemd delegated to this service (``Delegate=yes``), laid
    out as https://systemd.io/CGROUP_DELEGATION/ asks: the worker moves itself into the leaf
    ``<own>/worker`` (cgroup v2 allows no processes in a cgroup whose controllers are enabled for its
    children), enables memory, pids and cpu for ``<own>``'s children and returns ``<own>/workspaces``,
    under which each workspace gets its cgroup. Call it before any child process exists."""
    with open(self_cgroup) as fh:
        rel = next((line.split("::", 1)[1].strip() for line in fh if line.startswith("0::")), None)
    if rel is None or not (Path(mount) / "cgroup.controllers").exists():
        raise CgroupError(f"cgroup = true, but no cgroup v2 hierarchy is mounted at {mount} (cgroup v1?)")
    own = Path(mount) / rel.lstrip("/")
    leaf = own / "worker"
    leaf.mkdir(exist_ok=True)
    for pid in (own / "cgroup.procs").read_text().split():
        with contextlib.suppress(ProcessLookupError, OSError):
            (leaf / "cgroup.procs").write_text(pid)
    available = set((own / "cgroup.controllers").read_text().split())
    wanted = [c for c in ("memory", "pids", "cpu") if c in available]
    (own / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
    root = own / "workspaces"
    root.mkdir(exist_ok=True)
    return root


class Cgroups:
    def __init__(self, root: str | Path, memory_mb: int, pids_max: int, cpu_weight: int = 100) -> None:
        self.root = Path(root)
        self.memory = memory_mb << 20
        self.pids = pids_max
        self.cpu_weight = cpu_weight
        self.cpu = False

    def setup(self) -> None:
        controllers = self.root / "cgroup.controllers"
        if not controllers.exists():
            raise CgroupError(
                f"cgroup = true, but {self.root} is not a cgroup v2 directory (no cgroup.controllers)"
            )
        available = set(controllers.read_text().split())
        missing = {"memory", "pids"} - available
        if missing:
            raise CgroupError(f"cgroup controllers {sorted(missing)} are not delegated to {self.root}")
        self.cpu = "cpu" in available  # cpu.weight: the workspace's share of CPU as a whole
        (self.root / "cgroup.subtree_control").write_text("+memory +pids" + (" +cpu" if self.cpu else ""))

    def path(self, workspace: str) -> Path:
        return self.root / f"ws-{workspace}"

    def attach(self, workspace: str, pid: int) -> None:
        """Put ``pid`` (a fresh engine, before it runs user code) into the workspace's cgroup."""
        d = self.path(workspace)
        d.mkdir(exist_ok=True)
        (d / "memory.max").write_text(str(self.memory))
        with contextlib.suppress(FileNotFoundError, PermissionError):
            (d / "memory.swap.max").write_text("0")
        (d / "pids.max").write_text(str(self.pids))
        if self.cpu:
            (d / "cpu.weight").write_text(str(self.cpu_weight))
        (d / "cgroup.procs").write_text(str(pid))

    def kill(self, workspace: str) -> None:
        kill = self.path(workspace) / "cgroup.kill"
        if kill.exists():
            with contextlib.suppress(OSError):
                kill.write_text("1")

    def remove(self, workspace: str) -> None:
        with contextlib.suppress(OSError):
            os.rmdir(self.path(workspace))

    def memory_events(self, workspace: str) -> dict[str, int]:
        """memory.events of the workspace (``oom_kill`` tells why an engine died)."""
        try:
            text = (self.path(workspace) / "memory.events").read_text()
        except OSError:
            return {}
        return {k: int(v) for k, v in (line.split() for line in text.splitlines() if line.strip())}
