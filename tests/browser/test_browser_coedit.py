"""Editing one text file together (issue 17), in real browsers against the real `sagews dev`: the owner and
an editor type into the same file at the same time and every keystroke of both survives, in both editors,
on disk and in the history (with the editor as co-author); the other's cursor is shown; a viewer sees the
text live but cannot type; an editor cut off from the network keeps typing, and on reconnect both sides'
edits merge (no overwrite)."""

import statistics
import time

import pytest
from browser_helpers import TcpProxy, new_file, new_workspace, signup, snap
from playwright.sync_api import expect

BATCH = 25  # static/js/collab.js BATCH_MS


@pytest.fixture
def proxy(dev_server):
    p = TcpProxy(int(dev_server.rsplit(":", 1)[1]))
    yield p
    p.close()


def share(page, base: str, ws_name: str, user: str, role: str) -> None:
    page.goto(base + "/#/")
    row = page.locator("tr", has=page.locator("a.ws-name", has_text=ws_name))
    row.get_by_role("button", name="Share").click()
    page.fill(".dialog input[name=username]", user)
    page.select_option(".dialog select[name=role]", role)
    page.keyboard.press("Enter")
    expect(page.locator(".flash.info", has_text=f"Shared with {user}").first).to_be_visible()


def text_of(page) -> str:
    return page.locator(".text-editor").evaluate("e => e.CodeMirror.getValue()")


def open_shared(page, url: str, state: str = "saved") -> None:
    page.goto(url)
    expect(page.locator("#conn-state")).to_have_text("connected")
    expect(page.locator(".text-editor")).to_be_visible()
    expect(page.locator("#save-state")).to_have_attribute("data-state", state)


def test_owner_and_editor_type_at_once_nothing_is_lost(pages, dev_server):
    owner, editor, viewer = pages("coedit"), pages("coedit"), pages("coedit")
    signup(editor, dev_server, "edgar17")
    signup(viewer, dev_server, "vera17")
    signup(owner, dev_server, "olivia17")
    new_workspace(owner, "Coedit")
    new_file(owner, "file", "notes.txt")
    expect(owner.locator(".text-editor")).to_be_visible()
    url = owner.url
    share(owner, dev_server, "Coedit", "edgar17", "editor")
    share(owner, dev_server, "Coedit", "vera17", "viewer")
    open_shared(owner, url)
    open_shared(editor, url)
    open_shared(viewer, url, "read-only")

    # keystroke -> the other's screen (owner -> editor), through backend and worker
    owner.locator(".text-editor").click()
    samples = []
    for i in range(8):
        mark = f"<{i}>"
        owner.keyboard.type(mark[:-1])
        t0 = time.perf_counter()  # from the last key: one keystroke to the other's screen
        owner.keyboard.type(mark[-1])
        editor.wait_for_function(
            "m => document.querySelector('.text-editor').CodeMirror.getValue().includes(m)", arg=mark
        )
        samples.append(time.perf_counter() - t0)
    print(
        f"keystrokes owner -> editor's screen: median {statistics.median(samples) * 1000:.0f} ms, "
        f"max {max(samples) * 1000:.0f} ms (one key; {BATCH} ms of it is the client's batching)"
    )
    owner.keyboard.press("Enter")

    # both type at the same time: the owner on the first line, the editor at the end, keystrokes
    # interleaved without waiting for the other's to arrive
    owner.keyboard.press("Control+Home")
    editor.locator(".text-editor").click()
    editor.keyboard.press("Control+End")
    owner_words = [f"own{i}" for i in range(12)]
    editor_words = [f"edi{i}" for i in range(12)]
    for ow, ew in zip(owner_words, editor_words, strict=True):
        for a, b in zip(ow + " ", ew + " ", strict=True):
            owner.keyboard.type(a)
            editor.keyboard.type(b)
    for p in (owner, editor, viewer):
        expect(p.locator("#save-state")).to_have_attribute(
            "data-state", "saved" if p is not viewer else "read-only"
        )
    deadline = time.monotonic() + 15
    while not (text_of(owner) == text_of(editor) == text_of(viewer)) and time.monotonic() < deadline:
        time.sleep(0.1)
    final = text_of(owner)
    assert text_of(editor) == final and text_of(viewer) == final, (final, text_of(editor), text_of(viewer))
    assert " ".join(owner_words) in final, final  # every keystroke of each, in each one's order
    assert " ".join(editor_words) in final, final
    for i in range(8):
        assert f"<{i}>" in final
    # the editor's cursor is drawn in the owner's editor (awareness), named
    editor.keyboard.type("!")
    expect(owner.locator(".text-editor .remote-caret", has_text="edgar17")).to_be_visible()
    expect(editor.locator(".text-editor .remote-caret", has_text="olivia17")).to_be_attached()
    snap(owner, "01-owner")
    snap(editor, "02-editor")

    # the viewer sees it all but cannot type (read-only editor; the server refuses updates anyway)
    viewer.locator(".text-editor").click()
    viewer.keyboard.type("viewer typing")
    time.sleep(0.5)
    assert "viewer typing" not in text_of(owner)
    snap(viewer, "03-viewer")

    # a version: the owner saves; the history names the editor as co-author and has the text
    expect(editor.locator("#save-state")).to_have_attribute("data-state", "saved")
    final = text_of(owner)
    owner.click("#save")
    expect(owner.locator(".flash.info", has_text="Saved version")).to_be_visible()
    owner.click("#history-btn")
    top = owner.locator("ul.commits li").first
    expect(top).to_contain_text("Save notes.txt")
    expect(top.locator(".author")).to_have_text("olivia17 with edgar17")
    top.locator("button.commit").click()
    expect(owner.locator(".preview pre")).to_have_text(final)  # the committed file: from the checkout
    snap(owner, "04-history")


def test_reconnect_merges_edits_of_both_sides(pages, dev_server, proxy):
    owner, editor = pages("coedit-reconnect"), pages("coedit-reconnect")
    signup(editor, proxy.url, "rene17")  # the editor's traffic goes through the proxy we cut
    signup(owner, dev_server, "rosa17")
    new_workspace(owner, "Cut")
    new_file(owner, "file", "plan.txt")
    expect(owner.locator(".text-editor")).to_be_visible()
    ws_path = owner.url.split("/#", 1)[1]
    share(owner, dev_server, "Cut", "rene17", "editor")
    open_shared(owner, dev_server + "/#" + ws_path)
    open_shared(editor, proxy.url + "/#" + ws_path)
    owner.locator(".text-editor").click()
    owner.keyboard.type("first line\n")
    editor.wait_for_function(
        "() => document.querySelector('.text-editor').CodeMirror.getValue().includes('first line')"
    )

    editor.watch.allow("net::ERR_")
    editor.watch.allow("WebSocket connection to")
    proxy.cut()
    expect(editor.locator("#conn-state")).to_have_text("reconnecting…")
    editor.locator(".text-editor").click()
    editor.keyboard.press("Control+End")
    editor.keyboard.type("typed offline by rene")
    expect(editor.locator("#save-state")).to_have_attribute("data-state", "offline")
    owner.keyboard.press("Control+Home")
    owner.keyboard.type("typed online by rosa ")
    expect(owner.locator("#save-state")).to_have_attribute("data-state", "saved")
    snap(editor, "01-offline")
    proxy.restore()
    expect(editor.locator("#conn-state")).to_have_text("connected", timeout=20000)
    expect(editor.locator("#save-state")).to_have_attribute("data-state", "saved")
    want = "typed online by rosa first line\ntyped offline by rene"
    for p in (owner, editor):
        p.wait_for_function(
            "w => document.querySelector('.text-editor').CodeMirror.getValue() === w", arg=want, timeout=15000
        )
    snap(editor, "02-merged")
    # and the server has it: a fresh load of the owner's page shows the merged text
    owner.reload()
    open_shared(owner, owner.url)
    assert text_of(owner) == want

    # the old whole-file `write` (here: an upload over the open file) replaces the shared document:
    # both editors re-open it and show the new text
    owner.locator("input[type=file]").set_input_files(
        {"name": "plan.txt", "mimeType": "text/plain", "buffer": b"uploaded over it\n"}
    )
    for p in (owner, editor):
        p.wait_for_function(
            "() => document.querySelector('.text-editor').CodeMirror.getValue() === 'uploaded over it\\n'",
            timeout=15000,
        )
    editor.locator(".text-editor").click()
    editor.keyboard.press("Control+End")
    editor.keyboard.type("and on")
    owner.wait_for_function(
        "() => document.querySelector('.text-editor').CodeMirror.getValue() === 'uploaded over it\\nand on'"
    )
