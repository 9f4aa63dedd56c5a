"""The workspace page against the real `sagews dev`: reconnecting with unsaved edits (network cut by a
loopback proxy), server errors in words (replacing each other), CSRF, workspace and file management,
sizes that follow saves, editors seeing each other's saves, a streaming cell interrupted and restarted,
Run all / Clear outputs, and the outputs a real worker sends (tracebacks, sandboxed HTML, floods, LaTeX)."""

import re
from pathlib import Path

import pytest
from browser_helpers import (
    ConsoleWatch,
    TcpProxy,
    new_file,
    new_workspace,
    run_cell,
    set_cell,
    signup,
    snap,
    wait_done,
)
from playwright.sync_api import expect

TICKS = "import time\nfor i in range(600):\n    print('tick', i, flush=True)\n    time.sleep(0.1)"


@pytest.fixture
def proxy(dev_server):
    p = TcpProxy(int(dev_server.rsplit(":", 1)[1]))
    yield p
    p.close()


def test_reconnect_keeps_unsaved_edits(pages, proxy):
    page = pages("reconnect")
    signup(page, proxy.url, "carol")
    new_workspace(page, "Resilient")
    new_file(page, "file", "notes.txt")
    expect(page.locator(".text-editor")).to_be_visible()
    url = page.url

    # the network drops and stays down: the UI says so, edits are kept
    page.watch.allow("net::ERR_")  # the browser's failed reconnect attempts
    page.watch.allow("WebSocket connection to")
    proxy.cut()
    expect(page.locator("#conn-state")).to_have_text("reconnecting…")
    page.locator(".text-editor").click()
    page.keyboard.type("written while offline")
    expect(page.locator("#save-state")).to_have_attribute("data-state", "offline")
    snap(page, "01-offline")
    # ... even when the tab is closed while offline (the draft is in this browser's localStorage)
    ctx = page.context
    page.close()

    # the network comes back: the page opens again, restores the draft and writes it
    proxy.restore()
    page = ctx.new_page()
    page.shot_prefix = "reconnect"
    page.watch = ConsoleWatch(page)
    page.goto(url)
    expect(page.locator("#conn-state")).to_have_text("connected")
    expect(page.locator(".flash.info", has_text="Restored your unsaved edits")).to_be_visible()
    expect(page.locator(".text-editor")).to_contain_text("written while offline")
    expect(page.locator("#save-state")).to_have_attribute("data-state", "saved")
    snap(page, "02-resumed")
    assert page.watch.errors == []
    page.watch.allow("net::ERR_")  # the cut below
    page.watch.allow("WebSocket connection to")
    # the server has it: without the draft, a fresh load shows the text
    page.evaluate("() => localStorage.clear()")
    page.reload()
    expect(page.locator(".text-editor")).to_contain_text("written while offline")

    # a cut while connected: reconnects by itself (backoff) and re-opens the workspace
    proxy.cut()
    expect(page.locator("#conn-state")).to_have_text("reconnecting…")
    proxy.restore()
    expect(page.locator("#conn-state")).to_have_text("connected", timeout=20000)
    page.locator(".text-editor").click()
    page.keyboard.press("Control+End")
    page.keyboard.type(" and after")
    expect(page.locator("#save-state")).to_have_attribute("data-state", "saved")


def test_errors_in_words_replace_each_other_and_csrf(pages, dev_server):
    page = pages("errors")
    page.watch.allow("status of 403")  # the failed logins and the refused POST below
    page.watch.allow("status of 429")
    page.watch.allow("status of 404")
    signup(page, dev_server, "dave")
    page.click("#logout")
    # eleven failed logins: one message box (the last words, counted), not eleven
    for i in range(11):
        page.fill("#username", "dave")
        page.fill("#password", "wrong password")
        with page.expect_response("**/api/login"):
            page.keyboard.press("Enter")
        if i == 2:  # the same words again are counted
            expect(page.locator("#flash .flash")).to_have_count(1)
            expect(page.locator("#flash .flash")).to_contain_text("Wrong user name or password")
            expect(page.locator("#flash .flash-count")).to_have_text(" \u00d73")
    # the rate limit's words replaced them
    expect(page.locator("#flash .flash")).to_have_count(1)
    expect(page.locator("#flash .flash")).to_contain_text("Too many failed logins")
    snap(page, "01-one-message")
    page.locator("#flash .flash").get_by_role("button", name="Dismiss").click()
    expect(page.locator("#flash .flash")).to_have_count(0)

    # a server message in words: sharing with an unknown user
    page.goto(dev_server + "/")
    signup(page, dev_server, "dave2")
    new_workspace(page, "Errors")
    page.goto(dev_server + "/#/")
    row = page.locator("tr", has=page.locator("a.ws-name", has_text="Errors"))
    row.get_by_role("button", name="Share").click()
    page.fill(".dialog input[name=username]", "nobody")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert").filter(has_text="No user called nobody")).to_be_visible()
    page.keyboard.press("Escape")  # dismisses it
    expect(page.locator("#flash .flash")).to_have_count(0)
    # a state-changing request without the X-XSRFToken header is refused (Tornado xsrf_cookies)
    status = page.evaluate(
        "() => fetch('/api/workspaces', {method: 'POST', body: '{\"name\": \"x\"}'}).then(r => r.status)"
    )
    assert status == 403


def test_login_returns_to_the_requested_workspace(pages, dev_server):
    page = pages("login-return")
    page.watch.allow("status of 403")
    signup(page, dev_server, "judy", pw="pw-judy-123")
    new_workspace(page, "Linked")
    expect(page.locator(".ws-title")).to_have_text("Linked")
    url = page.url
    page.click("#logout")
    expect(page.locator("#username")).to_be_visible()
    page.goto(url)
    expect(page.locator("#username")).to_be_visible()
    page.fill("#username", "judy")
    page.fill("#password", "wrong-password")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert").filter(has_text="Wrong user name or password")).to_be_visible()
    page.fill("#password", "pw-judy-123")
    page.keyboard.press("Enter")
    expect(page.locator(".ws-title")).to_have_text("Linked")
    expect(page.locator("#conn-state")).to_have_text("connected")


def test_workspace_and_file_management(pages, dev_server, tmp_path):
    page = pages("manage", accept_downloads=True)
    signup(page, dev_server, "erin")

    def dialog_ok(value):
        page.fill(".dialog input[name=name]", value)
        page.keyboard.press("Enter")

    # workspace list: create, rename, copy, delete
    new_workspace(page, "First")
    page.goto(dev_server + "/#/")
    row = page.locator("tr", has=page.locator("a.ws-name", has_text="First"))
    row.get_by_role("button", name="Rename").click()
    dialog_ok("Renamed")
    expect(page.locator("a.ws-name", has_text="Renamed")).to_be_visible()
    ws_row = lambda name: page.locator("tr", has=page.locator("a.ws-name", has_text=name))  # noqa: E731
    ws_row("Renamed").get_by_role("button", name="Copy").click()
    dialog_ok("The copy")
    expect(page.locator("a.ws-name", has_text="The copy")).to_be_visible()
    ws_row("The copy").get_by_role("button", name="Delete").click()
    page.get_by_role("button", name="Yes").click()
    expect(page.locator("a.ws-name", has_text="The copy")).to_have_count(0)
    snap(page, "01-list")

    # files: new folder, upload into it, download, rename, delete
    page.locator("a.ws-name", has_text="Renamed").click()
    new_file(page, "folder", "data")
    page.locator("ul.tree .name", has_text="data").click()
    expect(page.locator(".crumbs")).to_contain_text("data")
    src = tmp_path / "numbers.csv"
    src.write_text("1,2,3\n")
    page.locator("input[type=file]").set_input_files(str(src))
    expect(page.locator("ul.tree .name", has_text="numbers.csv")).to_be_visible()
    big = {"name": "big.bin", "mimeType": "application/octet-stream", "buffer": b"\0" * (11 << 20)}
    page.locator("input[type=file]").set_input_files(big)
    expect(page.get_by_role("alert").filter(has_text="big.bin is too large")).to_be_visible()
    page.get_by_role("alert").filter(has_text="big.bin").get_by_role("button", name="Dismiss").click()
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download numbers.csv").click()
    assert Path(dl.value.path()).read_text() == "1,2,3\n"
    page.get_by_role("button", name="Rename numbers.csv").click()
    dialog_ok("n.csv")
    expect(page.locator("ul.tree .name", has_text="n.csv")).to_be_visible()
    row = page.locator("ul.tree li.entry", has_text="n.csv")
    expect(row.locator(".size")).to_have_text("6 B")
    page.locator("ul.tree .name", has_text="n.csv").click()
    expect(page.locator(".text-editor")).to_contain_text("1,2,3")
    # the size in the tree follows the saves (no reload, no new listing by hand)
    page.locator(".text-editor").click()
    page.keyboard.press("Control+End")
    page.keyboard.type("4,5,6\n")
    expect(page.locator("#save-state")).to_have_attribute("data-state", "saved")
    expect(row.locator(".size")).to_have_text("12 B")
    snap(page, "02-files")
    page.get_by_role("button", name="Delete n.csv").click()
    page.get_by_role("button", name="Yes").click()
    expect(page.locator("ul.tree .name", has_text="n.csv")).to_have_count(0)

    # the whole workspace as a zip (its last saved version)
    page.keyboard.press("Control+S")
    with page.expect_download() as dl:
        page.get_by_role("link", name="Download .zip").click()
    assert dl.value.suggested_filename.endswith(".zip")


def test_editors_see_each_others_saves(pages, dev_server):
    a, b = pages("collab"), pages("collab")
    signup(b, dev_server, "frank")
    signup(a, dev_server, "grace")
    new_workspace(a, "Together")
    new_file(a, "file", "plan.txt")
    expect(a.locator(".text-editor")).to_be_visible()
    ws_url = a.url
    a.goto(dev_server + "/#/")
    row = a.locator("tr", has=a.locator("a.ws-name", has_text="Together"))
    row.get_by_role("button", name="Share").click()
    a.fill(".dialog input[name=username]", "frank")
    a.select_option(".dialog select[name=role]", "editor")
    a.keyboard.press("Enter")
    expect(a.locator(".flash.info", has_text="Shared with frank").first).to_be_visible()
    a.goto(ws_url)
    b.goto(ws_url)
    expect(b.locator(".role-badge")).to_have_text("editor")
    expect(b.locator("#save")).to_be_visible()
    expect(a.locator(".presence")).to_contain_text("frank")
    a.locator(".text-editor").click()
    a.keyboard.type("step one")
    expect(a.locator("#save-state")).to_have_attribute("data-state", "saved")
    expect(b.locator(".text-editor")).to_contain_text("step one")
    snap(b, "01-editor-sees-change")


def test_running_cell_streams_interrupts_restarts(pages, dev_server):
    page = pages("interrupt")
    signup(page, dev_server, "heidi")
    new_workspace(page, "Long")
    new_file(page, "worksheet", "long.sagews")
    cell = set_cell(page, 0, TICKS, kind="python")
    page.keyboard.press("Control+Enter")
    # visibly running, output streaming in
    expect(cell).to_have_class(re.compile(r"\brunning\b"))
    expect(cell.locator(".cell-output")).to_contain_text("tick 3")
    expect(cell.locator(".cell-status")).to_have_text("running…")
    snap(page, "01-running")
    page.click("#interrupt")
    expect(cell).not_to_have_class(re.compile(r"\brunning\b"))
    expect(cell.locator(".cell-output")).to_contain_text("KeyboardInterrupt")
    expect(cell.locator(".out-interrupted")).to_have_text("Interrupted.")
    expect(cell.locator(".cell-status")).to_contain_text("interrupted")
    snap(page, "02-interrupted")
    # state survives an interrupt; a restart empties it and the cell runs again
    page.locator("#default-engine").select_option("python")
    cell.locator("button.add-below").click()
    run_cell(page, 1, "x = 41")
    r = run_cell(page, 2, "x + 1")
    expect(r.locator(".cell-output")).to_have_text("42")
    page.click("#restart")
    expect(page.locator(".flash.info", has_text="Engine restarted").first).to_be_visible()
    r.locator("button.run").click()
    wait_done(r)
    expect(r.locator(".cell-output")).to_contain_text("NameError")


def test_run_all_and_clear_outputs(pages, dev_server):
    page = pages("run-all")
    signup(page, dev_server, "ivan")
    new_workspace(page, "All")
    new_file(page, "worksheet", "all.sagews")
    page.locator(".cell").first.locator("select.engine").select_option("python")
    page.locator("#default-engine").select_option("python")
    page.locator(".cell").first.locator(".CodeMirror").click()
    page.keyboard.type("6*7")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("print('second')")
    page.keyboard.press("Shift+Enter")
    expect(page.locator(".cell").nth(1).locator(".cell-output")).to_have_text("second\n")
    page.click("#clear-outputs")
    expect(page.locator(".cell-output pre")).to_have_count(0)
    page.click("#run-all")
    expect(page.locator(".cell").nth(0).locator(".cell-output")).to_have_text("42")
    expect(page.locator(".cell").nth(1).locator(".cell-output")).to_have_text("second\n")
    expect(page.locator("#save-state")).to_have_attribute("data-state", "saved")


def test_real_worker_outputs_render(pages, dev_server, has_sage):
    """Errors, HTML (sandboxed), an output flood and LaTeX as the real worker sends them."""
    page = pages("outputs")
    signup(page, dev_server, "kim")
    new_workspace(page, "Outputs")
    new_file(page, "worksheet", "out.sagews")
    if not has_sage:
        page.locator("#default-engine").select_option("python")
        page.locator(".cell").first.locator("select.engine").select_option("python")
    cells = page.locator(".cell")
    cells.first.locator(".CodeMirror").click()
    codes = [
        "1/0",
        "html('<b>bold</b><img src=x onerror=\"parent.__xss=1\">')",
        "print('x' * 3000000)",
        *(["latex(x^2/2)"] if has_sage else []),
    ]
    for code in codes:
        page.keyboard.type(code)
        page.keyboard.press("Shift+Enter")
    for i in range(len(codes)):
        wait_done(cells.nth(i))
    expect(cells.nth(0).locator(".out-error")).to_contain_text("ZeroDivisionError")
    expect(cells.nth(1).locator("iframe.out-html")).to_have_attribute("sandbox", "")
    expect(cells.nth(1).frame_locator("iframe.out-html").locator("b")).to_have_text("bold")
    expect(cells.nth(2).locator(".cell-output")).to_contain_text("truncated")
    if has_sage:
        expect(cells.nth(3).locator(".katex")).to_have_count(1)
    snap(page, "01-outputs")
    assert page.evaluate("() => window.__xss") is None
