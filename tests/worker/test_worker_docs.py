"""Shared text documents on a real worker: the worker as the one authority of a CRDT document
(pycrdt/Yrs on both ends here, the same update encoding as Yjs in the browser): concurrent updates of two
connections merge and reach the other, the plain text reaches the checkout (and a save), a reconnecting
client's offline edits merge by state vector, a plain ``write`` goes into the open document, forged
updates are refused, and the save names every editor (author + Co-authored-by)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Text
from worker_helpers import WorkerProc, wait_for

from sagews.worker.client import WorkerClient, WorkerError
from sagews.worker.docs import SharedDoc


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Replica:
    """A client's copy of one document: a pycrdt Doc kept in sync through the worker."""

    def __init__(self, client: WorkerClient, session: str, path: str) -> None:
        self.client, self.session, self.path = client, session, path
        self.doc = Doc()
        self.text = self.doc.get("text", type=Text)
        self.id: str | None = None

    def open(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"session": self.session, "path": self.path}
        if self.id is not None:
            fields.update(doc=self.id, state=b64(self.doc.get_state()))
        r = self.client.request("doc_open", **fields)
        self.id = r["doc"]
        self.doc.apply_update(base64.b64decode(r["update"]))
        # what the server lacks of ours (offline edits): sent as one update
        mine = self.doc.get_update(base64.b64decode(r["state"]))
        if len(mine) > 2:
            self.send(mine)
        return r

    def send(self, update: bytes, author: str = "alice", origin: str = "x") -> dict[str, Any]:
        return self.client.request(
            "doc_update",
            session=self.session,
            path=self.path,
            update=b64(update),
            author=author,
            origin=origin,
        )

    def edit(self, index: int, s: str, author: str = "alice") -> None:
        before = self.doc.get_state()
        self.text.insert(index, s)
        self.send(self.doc.get_update(before), author)

    def pump(self, seconds: float = 0.3) -> None:
        """Apply the broadcast updates that arrived (unsolicited frames)."""
        deadline = time.monotonic() + seconds
        for m in self.client.pending:
            self._take(m)
        self.client.pending = []
        while time.monotonic() < deadline:
            self.client.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                msg = self.client.recv()
            except TimeoutError:
                break
            finally:
                self.client.sock.settimeout(60)
            if msg is not None:
                self._take(msg)

    def _take(self, msg: dict[str, Any]) -> None:
        if msg.get("type") == "doc_update" and msg.get("path") == self.path:
            self.doc.apply_update(base64.b64decode(msg["update"]))


def read(client: WorkerClient, session: str, path: str) -> str:
    return str(client.request("read", session=session, path=path)["text"])


def test_two_clients_converge_and_the_checkout_follows(worker: WorkerProc, session: str) -> None:
    with worker.client() as c1, worker.client() as c2:
        c1.request("write", session=session, path="notes.txt", text="shared\n")
        a, b = Replica(c1, session, "notes.txt"), Replica(c2, session, "notes.txt")
        assert a.open()["doc"] == b.open()["doc"]
        assert str(a.text) == str(b.text) == "shared\n"
        # both type "at once": neither has seen the other's edit
        a.edit(0, "A1 ", "alice")
        b.edit(len(str(b.text)), "B1\n", "bob")
        a.edit(3, "A2 ", "alice")
        a.pump()
        b.pump()
        assert str(a.text) == str(b.text)
        for piece in ("A1 ", "A2 ", "B1\n", "shared\n"):
            assert piece in str(a.text)
        # the authority writes the plain text to the checkout (debounced, in a helper)
        wait_for(lambda: read(c1, session, "notes.txt") == str(a.text), 5, "the checkout has the text")
        # a save commits it; alice edited first: she is the author of this autosave, bob co-authors
        saved = c1.request("save", session=session, message="autosave")
        assert saved.get("commit")
        top = c1.request("history", session=session, limit=1)["commits"][0]
        assert top["author"] == "alice" and top["coauthors"] == ["bob"], top
        # an explicit save by bob: bob is the author, nobody else edited since
        b.edit(0, "B2 ", "bob")
        c2.request("save", session=session, message="bob saves", author="bob")
        top = c2.request("history", session=session, limit=1)["commits"][0]
        assert top["author"] == "bob" and "coauthors" not in top, top
        assert read(c2, session, "notes.txt").startswith("B2 ")


def test_reconnect_merges_offline_edits(worker: WorkerProc, session: str) -> None:
    c1 = worker.client()
    with worker.client() as c2:
        c2.request("write", session=session, path="r.txt", text="base")
        a, b = Replica(c1, session, "r.txt"), Replica(c2, session, "r.txt")
        a.open()
        b.open()
        c1.close()  # the cut: a keeps editing offline, b online
        a.text.insert(0, "offline-")
        b.edit(len(str(b.text)), "-online", "bob")
        with worker.client() as c1b:
            a.client = c1b
            r = a.open()  # state-vector sync: same document, so nothing is reset
            assert r["reset"] is False
            b.pump()
            a.pump(0.1)
            assert str(a.text) == str(b.text) == "offline-base-online"
            wait_for(lambda: read(c2, session, "r.txt") == "offline-base-online", 5, "merged on disk")


def test_plain_write_ends_the_open_document_and_forgeries_fail(worker: WorkerProc, session: str) -> None:
    with worker.client() as c1, worker.client() as c2:
        c1.request("write", session=session, path="w.txt", text="one two three")
        a = Replica(c1, session, "w.txt")
        first = a.open()["doc"]
        for bad in ("not base64!", b64(b"\x01\x02garbage")):
            with pytest.raises(WorkerError) as ei:
                c1.request("doc_update", session=session, path="w.txt", update=bad)
            assert ei.value.code in {"bad_field", "bad_update"}
        with pytest.raises(WorkerError) as ei:
            c1.request("doc_update", session=session, path="never-opened.txt", update=b64(b"\x00\x00"))
        assert ei.value.code == "not_open"
        with pytest.raises(WorkerError) as ei:
            c1.request("doc_open", session=session, path="../etc/passwd")
        assert ei.value.code == "path_refused"
        assert str(a.text) == "one two three"
        # the old `write` request still works on an open document: the file gets the text, the
        # document ends (subscribers told) and the next doc_open is a new instance with that text
        c2.request("write", session=session, path="w.txt", text="one 2 three")
        wait_for(lambda: any(m.get("type") == "doc_closed" for m in _drain(c1)), 5, "doc_closed")
        c1.pending.clear()
        assert read(c2, session, "w.txt") == "one 2 three"
        fresh = Replica(c1, session, "w.txt")
        r = fresh.open()
        assert r["doc"] != first and str(fresh.text) == "one 2 three"
        a.client = c1
        assert a.open()["reset"] is True  # the old replica is told to start again
        # deleting the file ends its document too
        c2.request("delete", session=session, path="w.txt")
        wait_for(lambda: any(m.get("type") == "doc_closed" for m in _drain(c1)), 5, "doc_closed")


def _drain(client: WorkerClient) -> list[dict[str, Any]]:
    client.sock.settimeout(0.2)
    try:
        msg = client.recv()
        if msg is not None:
            client.pending.append(msg)
    except TimeoutError:
        pass
    finally:
        client.sock.settimeout(60)
    return client.pending


def test_git_log_has_the_trailer(worker: WorkerProc, session: str) -> None:
    with worker.client() as c1:
        c1.request("write", session=session, path="t.txt", text="")
        a = Replica(c1, session, "t.txt")
        a.open()
        a.edit(0, "x", "carol")
        a.edit(1, "y", "dave")
        c1.request("save", session=session, message="together", author="erin")
        top = c1.request("history", session=session, limit=1)["commits"][0]
        assert top["author"] == "erin" and top["coauthors"] == ["carol", "dave"]
        ws = next(s for s in c1.request("status")["session_list"] if s["session"] == session)["workspace"]
        body = subprocess.run(
            ["git", "-c", "safe.directory=*", "-C", str(worker.base / "workspaces" / ws), "log", "-1",
             "--format=%B"],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        assert "Co-authored-by: carol <carol@sagews>" in body and "Co-authored-by: dave" in body


YJS = Path(__file__).resolve().parents[2] / "static" / "node_modules" / "yjs" / "dist" / "yjs.mjs"


@pytest.mark.skipif(not YJS.exists() or shutil.which("node") is None, reason="needs node + static/build.sh")
@pytest.mark.parametrize("text", ["abc-def", "é😀ab-cd", "ascii first é", "ü\nzwei\n"])
def test_yjs_edits_the_worker_s_text(tmp_path: Path, text: str) -> None:
    """The one edit the worker makes itself, loading the file into a document, reads alike in Yjs (the
    browser's library): a Yjs client edits after the non-ASCII text and the worker gets the same text."""
    doc = SharedDoc(None, "x.txt", text)  # type: ignore[arg-type]  # no session needed for the CRDT
    (tmp_path / "u0").write_bytes(doc.diff(None))
    script = (
        f"import * as Y from {json.dumps(str(YJS))}; import fs from 'fs';"
        f"const dir = {json.dumps(str(tmp_path))};"
        "const d = new Y.Doc(); Y.applyUpdate(d, fs.readFileSync(dir + '/u0'));"
        "const t = d.getText('text'); const sv = Y.encodeStateVector(d);"
        "t.insert(t.length - 1, 'Y'); t.insert(t.length, '!'); t.delete(t.length - 3, 1);"
        "fs.writeFileSync(dir + '/u1', Y.encodeStateAsUpdate(d, sv));"
        "process.stdout.write(JSON.stringify(t.toString()));"
    )
    out = subprocess.run(
        ["node", "--input-type=module", "-e", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    doc.doc.apply_update((tmp_path / "u1").read_bytes())
    assert str(doc.text) == json.loads(out)
