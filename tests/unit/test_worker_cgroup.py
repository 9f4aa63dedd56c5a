"""cgroup_root = "auto": the layout the worker makes of the subtree systemd delegates to it.

The kernel side cannot run here (cgroup v1 hosts, see docs/security.md); this checks which files the
worker writes, against a directory tree shaped like a delegated cgroup v2 subtree.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sagews.worker.cgroup import CgroupError, Cgroups, delegated_root


def test_delegated_root_layout(tmp_path: Path) -> None:
    mount = tmp_path / "cgroup"
    own = mount / "system.slice" / "sagews-worker.service"
    own.mkdir(parents=True)
    (mount / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (own / "cgroup.controllers").write_text("cpu memory pids\n")
    (own / "cgroup.procs").write_text("4242\n")
    self_cgroup = tmp_path / "self-cgroup"
    self_cgroup.write_text("0::/system.slice/sagews-worker.service\n")
    root = delegated_root(str(self_cgroup), str(mount))
    assert root == own / "workspaces"
    assert (own / "worker" / "cgroup.procs").read_text() == "4242"  # the worker moved to a leaf
    assert (own / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    cg = Cgroups(root, 300, 32, cpu_weight=50)
    cg.setup()
    assert (root / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    cg.attach("ws", 4343)
    d = root / "ws-ws"
    assert (d / "memory.max").read_text() == str(300 << 20)
    assert (d / "pids.max").read_text() == "32"
    assert (d / "cpu.weight").read_text() == "50"
    assert (d / "cgroup.procs").read_text() == "4343"


def test_delegated_root_refuses_cgroup_v1(tmp_path: Path) -> None:
    self_cgroup = tmp_path / "self-cgroup"
    self_cgroup.write_text("4:memory:/x\n0::/\n")
    with pytest.raises(CgroupError, match="no cgroup v2 hierarchy"):
        delegated_root(str(self_cgroup), str(tmp_path))
