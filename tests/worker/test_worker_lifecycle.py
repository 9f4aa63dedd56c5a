"""Limits over time and the worker's life: disk quota, idle timeout, graceful shutdown (SIGTERM)."""

from __future__ import annotations

import base64
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from worker_helpers import WorkerProc, wait_for

from sagews.worker.client import WorkerError
from sagews.worker.users import uid_pids


def test_disk_quota_measured(make_worker: Callable[..., WorkerProc]) -> None:
    """The fallback without workspace filesystems (disk_quota = measured): writes and saves are refused
    once a measurement finds the workspace over quota."""
    w = make_worker(
        warm_pool=1, engines=["python"], disk_quota="measured", limits={"disk_quota_mb": 3, "file_size_mb": 2}
    )
    with w.client() as c:
        sid = c.request("open", workspace="quota")["session"]
        blob = base64.b64encode(b"\x01" * (1536 << 10)).decode()
        c.request("write", session=sid, path="a", b64=blob)
        c.request("write", session=sid, path="b", b64=blob)  # 3 MiB: over the 3 MiB quota with metadata
        r = c.execute(sid, "open('c', 'wb').write(b'x' * (1 << 20))")
        assert r["done"]["status"] == "ok"
        notice = wait_for(
            lambda: next((m for m in c.pending if m["type"] == "quota"), None) or _poll(c),
            10,
            "a quota notice",
        )
        assert notice["used"] > notice["quota"]
        with pytest.raises(WorkerError) as ei:
            c.request("write", session=sid, path="d", text="more")
        assert ei.value.code == "quota"
        with pytest.raises(WorkerError) as ei:
            c.request("save", session=sid)
        assert ei.value.code == "quota"
        # deleting brings the workspace back under quota
        c.request("delete", session=sid, path="a")
        c.request("delete", session=sid, path="c")
        wait_for(lambda: _write_ok(c, sid), 10, "writes to be allowed again")


def _poll(c: object) -> None:
    c.request("status")  # type: ignore[attr-defined]


def _write_ok(c: object, sid: str) -> bool:
    try:
        c.request("write", session=sid, path="d", text="ok")  # type: ignore[attr-defined]
    except WorkerError:
        return False
    return True


def test_idle_timeout(make_worker: Callable[..., WorkerProc]) -> None:
    w = make_worker(warm_pool=1, engines=["python"], limits={"idle_timeout_seconds": 2.0})
    with w.client() as c:
        opened = c.request("open", workspace="idle")
        sid = opened["session"]
        c.execute(sid, "import subprocess\nsubprocess.Popen(['sleep', '600'])\nNone")
        uid = pwd.getpwnam(opened["user"]).pw_uid
        assert len(uid_pids(uid)) >= 2  # the engine and its background sleep
        msg = c.recv()  # the worker tells the last client when it closes an idle session
        assert msg is not None
        assert msg["type"] == "closed"
        assert msg["reason"] == "idle timeout"
        with pytest.raises(WorkerError) as ei:
            c.request("exec", session=sid, code="1")
        assert ei.value.code == "no_session"
        assert uid_pids(uid) == []  # every process of the workspace is gone when `closed` is sent


def test_sigterm_finishes_and_checkpoints(make_worker: Callable[..., WorkerProc]) -> None:
    w = make_worker(warm_pool=1, engines=["python"], shutdown_grace_seconds=5)
    c = w.client()
    sid = c.request("open", workspace="graceful")["session"]
    c.send(
        {
            "type": "exec",
            "id": "slow",
            "session": sid,
            "code": "print('started', flush=True)\nimport time\ntime.sleep(1)\n"
            "open('result.txt', 'w').write('done')\n'finished'",
        }
    )
    first = c.recv()
    assert first is not None
    assert first["type"] == "stream"  # the execution is running
    w.proc.send_signal(signal.SIGTERM)
    frames = [first]
    while frames[-1] is not None and frames[-1]["type"] != "done":
        frames.append(c.recv())
    kinds = [f["type"] for f in frames if f]
    assert "shutdown" in kinds  # clients are told
    done = next(f for f in frames if f and f["type"] == "done")
    assert done["status"] == "ok"  # the running execution was allowed to finish
    assert next(f for f in frames if f and f["type"] == "result")["data"]["text/plain"] == "'finished'"
    assert w.proc.wait(30) == 0
    c.close()
    # the checkpoint: a bundle on the worker and a commit with the file
    bundles = sorted((Path(w.config["state_dir"]) / "bundles" / "graceful").glob("*.bundle"))
    assert bundles
    out = subprocess.run(["git", "bundle", "list-heads", str(bundles[-1])], capture_output=True, check=True)
    assert out.stdout
    # the checkout is on the workspace's own filesystem (unmounted at shutdown): read the bundle
    clone = Path(w.config["state_dir"]) / "checkpoint-clone"
    subprocess.run(["git", "clone", "-q", str(bundles[-1]), str(clone)], capture_output=True, check=True)
    log = subprocess.run(
        ["git", "-C", str(clone), "log", "--format=%s"], capture_output=True, check=True, text=True
    ).stdout
    assert "checkpoint at worker shutdown" in log


def test_zygote_death_is_survived(make_worker: Callable[..., WorkerProc]) -> None:
    w = make_worker(warm_pool=1, engines=["python"])
    with w.client() as c:
        sid = c.request("open", workspace="zyg")["session"]
        assert c.execute(sid, "1")["result"]["text/plain"] == "1"
        children = Path(f"/proc/{w.proc.pid}/task/{w.proc.pid}/children").read_text().split()
        zygote = next(
            int(p) for p in children if b"sagews.worker.zygote" in Path(f"/proc/{p}/cmdline").read_bytes()
        )
        os.kill(zygote, signal.SIGKILL)
        # the session's engine dies with its parent; the worker notices, starts a new zygote
        wait_for(lambda: _dead(c, sid), 20, "the session to be reported dead")
        c.request("restart", session=sid)
        assert c.execute(sid, "2")["result"]["text/plain"] == "2"
        other = c.request("open", workspace="zyg2")["session"]
        assert c.execute(other, "3")["result"]["text/plain"] == "3"
    assert w.proc.poll() is None


def _dead(c: object, sid: str) -> bool:
    try:
        r = c.execute(sid, "1")  # type: ignore[attr-defined]
    except WorkerError as exc:
        return exc.code == "session_dead"
    return r["done"]["status"] == "died"


def test_cgroup_switch_with_stand_in_tree(make_worker: Callable[..., WorkerProc], base_dir: Path) -> None:
    """The cgroup v2 path's logic against a plain directory standing in for a delegated cgroup
    (this machine has cgroup v1); the kernel side is only exercised on cgroup v2 hosts."""
    root = base_dir / "fake-cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    w = make_worker(warm_pool=1, engines=["python"], cgroup=True, cgroup_root=str(root), cgroup_memory_mb=300)
    assert "+memory +pids" in (root / "cgroup.subtree_control").read_text()
    with w.client() as c:
        sid = c.request("open", workspace="cg")["session"]
        opened_user = c.request("status")["session_list"][0]["user"]
        d = root / "ws-cg"
        pid = int((d / "cgroup.procs").read_text())  # the last pid written: the engine
        assert pid in uid_pids(pwd.getpwnam(opened_user).pw_uid)
        assert int((d / "memory.max").read_text()) == 300 << 20
        assert (d / "pids.max").read_text() == "32"
        # a terminal's shell joins the same cgroup itself, before it runs anything (it writes "0": itself)
        c.request("term_open", session=sid)
        wait_for(lambda: (d / "cgroup.procs").read_text() == "0", what="the shell in the workspace's cgroup")
        c.request("close", session=sid)


def test_cgroup_switch_refuses_a_non_cgroup_dir(
    make_worker: Callable[..., WorkerProc], base_dir: Path
) -> None:
    with pytest.raises(RuntimeError, match="not a cgroup v2 directory"):
        make_worker(warm_pool=0, engines=["python"], cgroup=True, cgroup_root=str(base_dir))


def test_dead_warm_engine_is_replaced(make_worker: Callable[..., WorkerProc]) -> None:
    w = make_worker(warm_pool=2, engines=["python"])
    with w.client() as c:
        wait_for(lambda: c.request("status")["warm"] == 2, 30, "the warm pool")
        children = Path(f"/proc/{w.proc.pid}/task/{w.proc.pid}/children").read_text().split()
        zygote = next(
            p for p in children if b"sagews.worker.zygote" in Path(f"/proc/{p}/cmdline").read_bytes()
        )
        warm = Path(f"/proc/{zygote}/task/{zygote}/children").read_text().split()
        assert len(warm) == 2
        for pid in warm:
            os.kill(int(pid), signal.SIGKILL)
        sid = c.request("open", workspace="after-warm-death")["session"]
        assert c.execute(sid, "8")["result"]["text/plain"] == "8"


def test_user_pool_exhaustion_and_reuse(make_worker: Callable[..., WorkerProc]) -> None:
    w = make_worker(warm_pool=0, engines=["python"], user_pool_size=2)
    ws = Path(w.config["workspaces_dir"])
    with w.client() as c:
        a = c.request("open", workspace="pool-a")
        b = c.request("open", workspace="pool-b")
        assert a["user"] != b["user"]
        c.request("write", session=a["session"], path="mine.txt", text="a's")
        with pytest.raises(WorkerError) as ei:
            c.request("open", workspace="pool-c")
        assert ei.value.code == "no_capacity"
        c.request("close", session=a["session"])
        cc = c.request("open", workspace="pool-c")
        assert cc["user"] == a["user"]  # the idle workspace's uid was reclaimed...
        assert (ws / "pool-a").stat().st_uid == 0  # ...after its checkout was handed to root
        r = c.execute(cc["session"], f"open({str(ws / 'pool-a' / 'mine.txt')!r}).read()")
        assert r["exception"]["ename"] == "PermissionError"
        c.request("close", session=b["session"])
        again = c.request("open", workspace="pool-a")
        assert c.request("read", session=again["session"], path="mine.txt")["text"] == "a's"


def test_without_isolation_the_uid_is_killed_instead(make_worker: Callable[..., WorkerProc]) -> None:
    """isolation = false (hosts without CAP_SYS_ADMIN): no namespaces, every process of the uid is
    killed at restart and close instead; disk usage is measured."""
    w = make_worker(warm_pool=1, engines=["python"], isolation=False, disk_quota="measured")
    with w.client() as c:
        assert c.request("status")["disk_quota"] == "measured"
        opened = c.request("open", workspace="plain")
        sid, uid = opened["session"], pwd.getpwnam(opened["user"]).pw_uid
        r = c.execute(sid, "import os, subprocess\nsubprocess.Popen(['sleep', '600'])\nos.getpid() != 2")
        assert r["result"]["text/plain"] == "True"  # the host's PID namespace
        c.request("restart", session=sid)
        # the old engine and its sleep get SIGKILL; the kernel reaps them a moment after restart returns
        deadline = time.monotonic() + 10
        while len(uid_pids(uid)) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(uid_pids(uid)) == 1  # the new engine only
        # a terminal without namespaces: the workspace's uid all the same, and it ends with the session
        c.request("term_open", session=sid)
        wait_for(lambda: len(uid_pids(uid)) == 2, what="the terminal's shell running as the workspace's uid")
        c.request("close", session=sid)
        deadline = time.monotonic() + 10
        while uid_pids(uid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert uid_pids(uid) == []
