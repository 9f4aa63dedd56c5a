"""Hostile user code: each case is contained, the caller gets a clear answer, others are unharmed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from worker_helpers import WorkerProc

from sagews.worker.client import WorkerClient, WorkerError


@pytest.fixture
def bystander(client: WorkerClient) -> str:
    """Another workspace's session that must keep working through every attack."""
    sid = client.request("open", workspace="bystander")["session"]
    client.execute(sid, "secret = 'kept'")
    client.request("write", session=sid, path="private.txt", text="bystander's data")
    return sid


def assert_unharmed(client: WorkerClient, bystander: str) -> None:
    assert client.execute(bystander, "secret")["result"]["text/plain"] == "'kept'"
    assert client.request("status")["version"]


def test_print_flood(client: WorkerClient, session: str, bystander: str) -> None:
    r = client.execute(session, "while True: print(1)")
    assert r["done"]["status"] == "limit"
    assert r["done"]["limit"] == "output"
    assert len(r["stdout"]) <= 200_000
    assert "output limit" in r["stderr"]
    assert client.execute(session, "'alive'")["result"]["text/plain"] == "'alive'"
    assert_unharmed(client, bystander)


def test_flood_ignoring_interrupts_is_killed(client: WorkerClient, session: str, bystander: str) -> None:
    code = "while True:\n    try:\n        print('x' * 1000)\n    except KeyboardInterrupt:\n        pass"
    r = client.execute(session, code)
    assert r["done"]["status"] == "limit"
    assert "did not stop" in r["done"]["message"] or r["done"]["limit"] == "output"
    client.request("restart", session=session)
    assert client.execute(session, "1")["result"]["text/plain"] == "1"
    assert_unharmed(client, bystander)


def test_wall_clock(client: WorkerClient, session: str, bystander: str) -> None:
    r = client.execute(session, "while True:\n    pass")
    assert r["done"]["status"] == "limit"
    assert r["done"]["limit"] == "walltime"
    assert "wall-clock" in r["done"]["message"]
    assert client.execute(session, "2")["result"]["text/plain"] == "2"  # interrupted, session survives
    assert_unharmed(client, bystander)


def test_fork_bomb(client: WorkerClient, session: str, bystander: str) -> None:
    code = (
        "import os\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            import time; time.sleep(30); os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('fork refused after', n, e)\n"
        "n"
    )
    r = client.execute(session, code)
    assert "fork refused" in r["stdout"]
    assert int(r["result"]["text/plain"]) < 32
    client.request("kill", session=session)  # kills every process of the workspace's uid
    client.request("restart", session=session)
    assert client.execute(session, "1+1")["result"]["text/plain"] == "2"
    assert_unharmed(client, bystander)


def test_allocate_10_gb(client: WorkerClient, session: str, bystander: str) -> None:
    r = client.execute(session, "x = bytearray(10 * 1024**3)")
    assert r["exception"]["ename"] == "MemoryError"
    assert client.execute(session, "3")["result"]["text/plain"] == "3"
    assert_unharmed(client, bystander)


def test_huge_file(client: WorkerClient, session: str, bystander: str) -> None:
    code = "f = open('big', 'wb')\nchunk = b'x' * (1 << 20)\nfor i in range(100):\n    f.write(chunk)\n    f.flush()"  # noqa: E501
    r = client.execute(session, code)
    assert r["exception"] is not None
    assert "File too large" in r["exception"]["evalue"] or r["exception"]["ename"] == "OSError"
    size = client.request("ls", session=session)["entries"][0]["size"]
    assert size <= 20 << 20
    assert_unharmed(client, bystander)


def test_kill_parent(client: WorkerClient, session: str, bystander: str) -> None:
    r = client.execute(session, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    assert r["exception"]["ename"] == "PermissionError"
    r = client.execute(session, "import os, signal\nos.kill(1, signal.SIGKILL)")
    assert r["exception"]["ename"] == "PermissionError"
    assert_unharmed(client, bystander)


def test_engine_suicide_is_reported(client: WorkerClient, session: str, bystander: str) -> None:
    r = client.execute(session, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert r["done"]["status"] == "died"
    assert "SIGKILL" in r["done"]["message"]
    client.request("restart", session=session)
    assert client.execute(session, "5")["result"]["text/plain"] == "5"
    # kill(-1): every process the workspace user may signal (but itself): in its PID namespace, none
    # but its own (the namespace's init is root's: ProcessLookupError when nothing else runs)
    r = client.execute(
        session, "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass"
    )
    assert r["done"]["status"] == "ok"
    assert client.execute(session, "6")["result"]["text/plain"] == "6"
    assert_unharmed(client, bystander)


def test_cannot_read_other_workspace_or_key(
    worker: WorkerProc, client: WorkerClient, session: str, bystander: str
) -> None:
    other = Path(worker.config["workspaces_dir"]) / "bystander" / "private.txt"
    key = worker.config["key"]
    for path in (str(other), key, str(Path(worker.config["state_dir"]) / "uids.json")):
        r = client.execute(session, f"open({path!r}).read()")
        assert r["exception"]["ename"] == "PermissionError", (path, r)
    r = client.execute(session, f"import os\nos.listdir({worker.config['workspaces_dir']!r})")
    assert r["exception"]["ename"] == "PermissionError"
    assert os.stat(key).st_mode & 0o777 == 0o600
    r = client.execute(session, "import os\nos.getuid(), os.getgroups()")
    uid, groups = eval(r["result"]["text/plain"])  # noqa: S307
    assert uid != 0
    assert groups == []
    assert_unharmed(client, bystander)


def test_symlink_escapes(worker: WorkerProc, client: WorkerClient, session: str, bystander: str) -> None:
    other = Path(worker.config["workspaces_dir"]) / "bystander"
    client.execute(
        session,
        f"import os\nos.symlink({str(other)!r}, 'other')\nos.symlink('/etc', 'etc')\n"
        f"os.symlink({worker.config['key']!r}, 'key')\nos.symlink('/etc/passwd', 'passwd')",
    )
    for path in ("other/private.txt", "etc/passwd", "key", "passwd"):
        with pytest.raises(WorkerError) as ei:
            client.request("read", session=session, path=path)
        assert ei.value.code == "path_refused", path
    for path in ("other/x", "key", "etc/x"):
        with pytest.raises(WorkerError) as ei:
            client.request("write", session=session, path=path, text="pwned")
        assert ei.value.code == "path_refused", path
    with pytest.raises(WorkerError) as ei:
        client.request("ls", session=session, path="other")
    assert ei.value.code == "path_refused"
    with pytest.raises(WorkerError):
        client.request("rename", session=session, src="passwd", dst="../passwd")
    assert not (other / "x").exists()
    assert_unharmed(client, bystander)


def test_garbage_on_the_engine_channel(client: WorkerClient, session: str, bystander: str) -> None:
    # user code owns its engine process, so it can write to the control socket: only its session suffers
    r = client.execute(session, "import os\nos.write(3, b'\\xff' * 64)\nimport time\ntime.sleep(30)")
    assert r["done"]["status"] in {"died", "limit"}
    client.request("restart", session=session)
    assert client.execute(session, "7")["result"]["text/plain"] == "7"
    assert_unharmed(client, bystander)


def test_forged_done_only_fools_its_own_session(client: WorkerClient, session: str, bystander: str) -> None:
    code = (
        "import os, json, struct\n"
        "body = json.dumps({'type': 'done', 'id': 'other', 'status': 'ok'}).encode()\n"
        "os.write(3, struct.pack('>I', len(body)) + body)\n"
        "'real'"
    )
    r = client.execute(session, code)
    assert r["result"]["text/plain"] == "'real'"
    assert_unharmed(client, bystander)


def test_shared_tmp_leftovers_are_purged(client: WorkerClient) -> None:
    opened = client.request("open", workspace="tmp-litter")
    sid = opened["session"]
    code = (
        "import os\n"
        "open('/tmp/sagews-litter', 'w').write('x')\n"
        "os.makedirs('/var/tmp/sagews-litter-dir/sub', exist_ok=True)\n"
        "open('/dev/shm/sagews-litter', 'w').write('x')\n"
        "import tempfile\ntempfile.gettempdir()"
    )
    r = client.execute(sid, code)
    assert r["result"]["text/plain"].endswith(f"/{opened['user']}/tmp'")  # TMPDIR: the private /tmp
    client.request("close", session=sid)
    for path in ("/tmp/sagews-litter", "/var/tmp/sagews-litter-dir", "/dev/shm/sagews-litter"):
        assert not os.path.lexists(path), path
