"""Worker configuration: one dataclass, loaded from a TOML or JSON file, or defaults.

Every field is documented in docs/protocol-worker.md ("Configuration").
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class Limits:
    """Per-session limits applied to user code (rlimits unless ``cgroup`` is on)."""

    cpu_seconds: int = 600  # RLIMIT_CPU of the session process (cumulative over its cells)
    address_space_mb: int = 4096  # RLIMIT_AS; Sage needs >= 2048
    processes: int = 64  # RLIMIT_NPROC for the workspace's uid (threads count too)
    file_size_mb: int = 250  # RLIMIT_FSIZE: largest single file user code may write
    open_files: int = 256  # RLIMIT_NOFILE
    walltime_seconds: float = 300.0  # per execution; then interrupt, then kill
    idle_timeout_seconds: float = 1800.0  # session closed after this long without requests
    disk_quota_mb: int = 500  # the workspace's filesystem (checkout + private tmp dirs), see disk_quota
    disk_inodes: int = 100_000  # files and directories of the workspace
    output_bytes: int = 1_000_000  # stdout+stderr+rich output per execution; then cut + interrupt
    interrupt_grace_seconds: float = 2.0  # after an interrupt for timeout/flood, kill if still running


@dataclass
class WorkerConfig:
    host: str = "127.0.0.1"
    port: int = 6100
    # the worker's certificate from the pki role (server + client auth; key root-only), and the CA
    cert: str = "/etc/ssl/sagews/worker.crt"
    key: str = "/etc/ssl/sagews/worker.key"
    ca: str = "/etc/ssl/sagews/ca.crt"
    workspaces_dir: str = "/var/lib/sagews-worker/workspaces"
    state_dir: str = "/var/lib/sagews-worker/state"
    tmp_dir: str = "/var/lib/sagews-worker/tmp"
    max_frame: int = 16 * 1024 * 1024
    user_prefix: str = "sagews_worker_"
    user_pool_size: int = 64
    owner_sessions: int = 16  # open sessions one owner (``open.owner``, the account) may hold; 0: no cap
    owner_reserve: int = 4  # the last free pool users go only to owners without a session here
    uid_base: int = 2_000_000  # pool users get uids uid_base..uid_base+user_pool_size-1 (0: useradd picks)
    engines: list[str] = field(default_factory=lambda: ["python", "sage"])
    default_engine: str = "python"
    helper_processes: int = 0  # file/git helper forks at once (0: 2 per CPU, at least 4), shared fairly
    warm_pool: int = 2  # engine processes kept forked and waiting (pre-imported) for new sessions
    disk_quota: str = "auto"  # image: a filesystem per workspace (kernel-enforced); measured; auto
    isolation: bool = True  # engines and helpers in their own PID/mount/IPC namespaces (docs/security.md)
    cgroup: bool = False  # per-workspace cgroup v2 (memory.max, pids.max); needs a delegated cgroup_root
    cgroup_root: str = "auto"  # auto: the subtree systemd delegates to the unit (Delegate=yes)
    cgroup_memory_mb: int = 1024
    cgroup_cpu_weight: int = 100  # cpu.weight of each workspace (all equal: a fair share each)
    shutdown_grace_seconds: float = 10.0
    limits: Limits = field(default_factory=Limits)
    logging: dict[str, Any] = field(default_factory=dict)  # a [logging] ClientConfig table (log server)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(cls: type, data: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} setting(s): {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _build(Limits, value) if name == "limits" and isinstance(value, dict) else value
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> WorkerConfig:
    result: WorkerConfig = _build(WorkerConfig, data)
    return result


def load(path: str | Path | None) -> WorkerConfig:
    """Defaults, overridden by a ``.toml`` (optionally under a ``[worker]`` table) or ``.json`` file."""
    if path is None:
        return WorkerConfig()
    p = Path(path)
    data: dict[str, Any] = json.loads(p.read_text()) if p.suffix == ".json" else tomllib.loads(p.read_text())
    if "worker" in data and isinstance(data["worker"], dict):
        data = {**data["worker"], **({"logging": data["logging"]} if "logging" in data else {})}
    return from_dict(data)
