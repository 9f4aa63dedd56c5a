"""Workspace files and git saves: confined file ops, incremental bundles, restore, history."""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from pathlib import Path

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

    assert {c["author"] for c in hist} == {"sagews"}  # no author given: the worker's own name

    # who saved: the backend's account name; anything else git would misread is refused
    client.request("write", session=session, path="notes.txt", text="by ada\n")
    client.request("save", session=session, message="ada's", author="ada")
    client.request("write", session=session, path="notes.txt", text="by mallory\n")
    client.request("save", session=session, message="evil", author="m <x@y>\nInjected: 1")
    authors = [c["author"] for c in client.request("history", session=session)["commits"][:2]]
    assert authors == ["sagews", "ada"]
    with pytest.raises(WorkerError) as ei:
        client.request("save", session=session, author=["not", "a", "string"])
    assert ei.value.code == "bad_field"


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


def _bundle_of(files: dict[str, bytes], tmp_path: Path) -> str:
    """A base bundle of a repository holding ``files`` (made here, with git, as the test's user)."""
    repo = tmp_path / "src"
    repo.mkdir()
    for name, data in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x"}  # fmt: skip
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "base"],
                 ["bundle", "create", "-q", str(tmp_path / "b.bundle"), "HEAD"]):  # fmt: skip
        subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)
    return base64.b64encode((tmp_path / "b.bundle").read_bytes()).decode()


def test_restore_answers_before_its_files_are_checked_out(
    client: WorkerClient, session: str, tmp_path: Path
) -> None:
    """The restore reply comes once the objects are indexed; the files are checked out in the
    background. Whatever arrives meanwhile sees the restored workspace: ls/read from the staged
    commit, writes/executions/saves after the checkout, so a write right after the reply is kept."""
    files = {f"pkg{i % 10}/mod{i}.py": f"VALUE = {i}\n".encode() * 50 for i in range(400)}
    files["README.md"] = b"restored\n"
    bundle = _bundle_of(files, tmp_path)
    client.request("write", session=session, path="old.txt", text="replaced by the restore")
    restored = client.request("restore", session=session, bundles=[bundle])
    assert restored["checkout"] == "background"
    root = client.request("ls", session=session)["entries"]
    sub = client.request("ls", session=session, path="pkg3")["entries"]
    assert client.request("read", session=session, path="pkg3/mod13.py")["text"] == "VALUE = 13\n" * 50
    at = client.request("read", session=session, path="README.md", commit=restored["commit"])
    assert at["text"] == "restored\n"
    # a client cannot point reads at a commit of its choosing through the worker's internal key
    fake = {"commit": "0" * 40, "time": 0}
    assert client.request("read", session=session, path="README.md", _staged=fake)["text"] == "restored\n"
    client.request("write", session=session, path="new.txt", text="written right after the restore")
    counted = client.execute(session, "open('pkg7/mod17.py').read().count('VALUE')")
    assert counted["result"]["text/plain"] == "50"
    # once checked out, the file system gives the same listing as the staged commit did
    now = [(e["name"], e["type"]) for e in client.request("ls", session=session)["entries"]]
    assert now == sorted([(e["name"], e["type"]) for e in root] + [("new.txt", "file")])
    assert [
        (e["name"], e["size"]) for e in client.request("ls", session=session, path="pkg3")["entries"]
    ] == [(e["name"], e["size"]) for e in sub]
    assert {e["name"] for e in root} == {".git", "README.md", *(f"pkg{i}" for i in range(10))}
    saved = client.request("save", session=session, message="after restore")
    assert saved["base"] is False  # the restored commit is its parent: an incremental bundle
    hist = client.request("history", session=session)["commits"]
    assert [c["message"] for c in hist] == ["after restore", "base"]
    assert (
        client.request("read", session=session, path="new.txt")["text"] == "written right after the restore"
    )


def test_restore_whose_checkout_fails_refuses_work_and_keeps_the_files(
    worker: WorkerProc, tmp_path: Path
) -> None:
    """A bundle whose files cannot be written (a file over the 20 MB file size limit: the pack
    itself is small) fails in the background checkout: the session then refuses saves, writes and
    executions instead of saving a wrong tree, and the workspace's files are untouched."""
    bundle = _bundle_of({"huge.bin": b"\0" * (25 << 20)}, tmp_path)
    workspace = f"wsfail{os.getpid()}"
    with worker.client() as c:
        sid = c.request("open", workspace=workspace)["session"]
        c.request("write", session=sid, path="keep.txt", text="precious")
        c.request("save", session=sid, message="keep")
        assert c.request("restore", session=sid, bundles=[bundle])["checkout"] == "background"
        for kind, args in (("save", {}), ("write", {"path": "x", "text": "x"}), ("ls", {})):
            with pytest.raises(WorkerError) as ei:
                c.request(kind, session=sid, **args)
            assert ei.value.code == "restore_failed", kind
        with pytest.raises(WorkerError) as ei:
            c.execute(sid, "1 + 1")
        assert ei.value.code == "restore_failed"
        c.call("close", session=sid)
        sid = c.request("open", workspace=workspace)["session"]
        assert c.request("read", session=sid, path="keep.txt")["text"] == "precious"
        assert [e["name"] for e in c.request("ls", session=sid)["entries"]] == [".git", "keep.txt"]
        c.call("close", session=sid)


def test_save_after_an_interrupted_save(client: WorkerClient, session: str) -> None:
    """A git killed in the middle of a commit (worker restart during a save) leaves .git/index.lock
    behind; the next save clears it instead of failing forever."""
    client.request("write", session=session, path="a.txt", text="1")
    client.request("save", session=session)
    client.execute(session, "open('.git/index.lock', 'w').close()\nopen('.git/HEAD.lock', 'w').close()")
    client.request("write", session=session, path="a.txt", text="2")
    saved = client.request("save", session=session, message="after the crash")
    assert not saved.get("unchanged")
    hist = client.request("history", session=session)["commits"]
    assert hist[0]["message"] == "after the crash"
