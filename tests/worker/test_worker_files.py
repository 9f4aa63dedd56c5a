"""Workspace files and git saves: confined file ops, incremental bundles, restore, history."""

from __future__ import annotations

import base64
import os
import threading

import pytest
from worker_helpers import WorkerProc

from sagews.worker.client import WorkerClient, WorkerError


def test_file_ops(client: WorkerClient, session: str) -> None:
    client.request("write", session=session, path="dir/a.txt", text="héllo")
    client.request("write", session=session, path="bin.dat", b64=base64.b64encode(b"\xff\x00").decode())
    names = [e["name"] for e in client.request("ls", session=session)["entries"]]
    assert names == ["bin.dat", "dir"]
    assert client.request("read", session=session, path="dir/a.txt")["text"] == "héllo"
    assert base64.b64decode(client.request("read", session=session, path="bin.dat")["b64"]) == b"\xff\x00"
    client.request("rename", session=session, src="dir/a.txt", dst="b.txt")
    assert client.request("read", session=session, path="b.txt")["text"] == "héllo"
    client.request("delete", session=session, path="dir")
    assert [e["name"] for e in client.request("ls", session=session)["entries"]] == ["b.txt", "bin.dat"]
    # user code sees the same files (cwd is the checkout)
    assert client.execute(session, "open('b.txt').read()")["result"]["text/plain"] == "'héllo'"
    with pytest.raises(WorkerError) as ei:
        client.request("read", session=session, path="missing")
    assert ei.value.code == "not_found"


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../x", ".git/config", "", 5, None])
def test_paths_refused(client: WorkerClient, session: str, path: object) -> None:
    with pytest.raises(WorkerError) as ei:
        client.request("write", session=session, path=path, text="x")
    assert ei.value.code in {"path_refused", "bad_field"}


def test_save_bundles_restore_history(client: WorkerClient, session: str) -> None:
    # a repository with some bulk, so a small change must give a much smaller bundle
    big = base64.b64encode(os.urandom(512 * 1024)).decode()  # incompressible
    client.request("write", session=session, path="data.bin", b64=big)
    client.request("write", session=session, path="notes.txt", text="v1\n")
    first = client.request("save", session=session, message="first")
    assert first["base"] is True
    bundles = [first["bundle"]]
    unchanged = client.request("save", session=session, message="nothing")
    assert unchanged["unchanged"] is True
    sizes = []
    for i in range(2, 5):
        client.request("write", session=session, path="notes.txt", text=f"v{i}\n")
        saved = client.request("save", session=session, message=f"edit {i}")
        assert saved["base"] is False
        bundles.append(saved["bundle"])
        sizes.append(saved["size"])
    assert max(sizes) < first["size"] / 20, (sizes, first["size"])
    assert max(sizes) < 2000  # grows with the change, not with the repository

    hist = client.request("history", session=session)["commits"]
    assert [c["message"] for c in hist] == ["edit 4", "edit 3", "edit 2", "first"]
    old = client.request("read", session=session, path="notes.txt", commit=hist[-1]["commit"])
    assert old["text"] == "v1\n"

    # wreck the checkout, then rebuild it from the bundles (base + increments)
    client.execute(session, "import os\nos.remove('notes.txt')\nopen('junk', 'w').write('junk')")
    restored = client.request("restore", session=session, bundles=bundles)
    assert restored["commit"] == hist[0]["commit"]
    names = [e["name"] for e in client.request("ls", session=session)["entries"]]
    assert names == [".git", "data.bin", "notes.txt"]
    assert client.request("read", session=session, path="notes.txt")["text"] == "v4\n"
    assert len(client.request("history", session=session)["commits"]) == 4
    # the engine was restarted into the restored checkout
    assert client.execute(session, "open('notes.txt').read()")["result"]["text/plain"] == "'v4\\n'"
    # restoring from the worker's own stored bundles works too
    client.request("write", session=session, path="notes.txt", text="scratch")
    assert client.request("restore", session=session)["commit"] == hist[0]["commit"]


def test_concurrent_saves_of_one_workspace_all_succeed(worker: WorkerProc, session: str) -> None:
    """Saves arriving at once (two backends, autosave + a click) are run one after the other: none fails
    on git's index.lock, and the stored bundles still chain into the final state."""
    errors: list[BaseException] = []
    replies: list[dict[str, object]] = []

    def saver(i: int) -> None:
        try:
            with worker.client() as c:
                c.request("write", session=session, path=f"f{i}.txt", text=f"{i}\n")
                replies.append(c.request("save", session=session, message=f"save {i}"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=saver, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(replies) == 6
    with worker.client() as c:
        head = c.request("history", session=session)["commits"][0]["commit"]
        for i in range(6):
            c.request("delete", session=session, path=f"f{i}.txt")
        # rebuild from the bundles the worker stored for these saves: every file is back
        assert c.request("restore", session=session)["commit"] == head
        names = {e["name"] for e in c.request("ls", session=session)["entries"]}
    assert {f"f{i}.txt" for i in range(6)} <= names


def test_bad_bundle_leaves_the_workspace_alone(client: WorkerClient, session: str) -> None:
    client.request("write", session=session, path="keep.txt", text="precious")
    with pytest.raises(WorkerError) as ei:
        client.request("restore", session=session, bundles=[base64.b64encode(b"not a bundle").decode()])
    assert ei.value.code == "bad_bundle"
    with pytest.raises(WorkerError) as ei:
        client.request("restore", session=session, bundles=["%%% not base64"])
    assert ei.value.code == "bad_field"
    assert client.request("read", session=session, path="keep.txt")["text"] == "precious"
    assert [e["name"] for e in client.request("ls", session=session)["entries"]] == ["keep.txt"]


def test_git_hooks_and_filters_do_not_run_as_root(client: WorkerClient, session: str) -> None:
    client.request("write", session=session, path="a.txt", text="1")
    client.request("save", session=session, message="init")
    code = (
        "import os, stat\n"
        "hook = '.git/hooks/pre-commit'\n"
        "open(hook, 'w').write('#!/bin/sh\\ntouch hook-ran\\n')\n"
        "os.chmod(hook, 0o755)\n"
        "open('.gitattributes', 'w').write('*.txt filter=spy\\n')\n"
        "with open('.git/config', 'a') as f:\n"
        '    f.write(\'[filter "spy"]\\n\\tclean = sh -c "id -u > filter-uid; cat"\\n\')\n'
    )
    assert client.execute(session, code)["done"]["status"] == "ok"
    client.request("write", session=session, path="a.txt", text="2")
    client.request("save", session=session, message="second")
    names = {e["name"] for e in client.request("ls", session=session)["entries"]}
    assert "hook-ran" not in names  # hooks are disabled for worker-run git
    if "filter-uid" in names:  # filters do run, but only as the workspace's own user
        uid = client.request("read", session=session, path="filter-uid")["text"].strip()
        assert uid != "0"
