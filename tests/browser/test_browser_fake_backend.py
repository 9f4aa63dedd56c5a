"""The client against tests/browser/fake_backend.py (the protocol of docs/frontend.md, in memory): the whole
journey and reconnecting with unsaved edits. Runs while `sagews dev` does not exist, and afterwards keeps the
client honest about its own protocol module."""

import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from browser_helpers import ROOT, ConsoleWatch, shot_dir
from playwright.sync_api import expect
from test_browser_journey import dev_help, free_port, journey, signup

from tests.fixtures.dirs import service_dir
from tests.fixtures.users import pool_config

FAKE = Path(__file__).with_name("fake_backend.py")


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 (http://127.0.0.1)
        return r.read().decode()


@contextlib.contextmanager
def start_fake(args, log_name):
    port = free_port()
    log = open(shot_dir() / log_name, "w")  # noqa: SIM115 (closed below)
    cmd = [sys.executable, str(FAKE), "--port", str(port), *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                get(base + "/api/me")
                break
            except (OSError, urllib.error.URLError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"fake backend did not start; see {shot_dir() / log_name}")
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def fake_server(vendor_built):
    with start_fake([], "fake-backend.log") as url:
        yield url


def test_journey_against_fake_backend(browser, fake_server):
    journey(browser, fake_server, "fake-journey")


def test_reconnect_keeps_unsaved_edits(browser, fake_server):
    ctx = browser.new_context()
    page = ctx.new_page()
    page.set_default_timeout(20000)
    signup(page, fake_server, "carol")
    page.fill("#new-ws-name", "Resilient")
    page.keyboard.press("Enter")
    page.click("#new-file")
    page.fill(".dialog input[name=name]", "notes.txt")
    page.keyboard.press("Enter")
    expect(page.locator(".text-editor")).to_be_visible()
    ws_id = page.url.split("#/w/")[1].split("/")[0]

    # the connection drops and stays down: the UI says so, edits are kept
    get(fake_server + "/test/drop?hold=1")
    expect(page.locator("#conn-state")).to_have_text("reconnecting…")
    page.locator(".text-editor").click()
    page.keyboard.type("written while offline")
    expect(page.locator("#save-state")).to_have_attribute("data-state", "offline")
    page.screenshot(path=str(shot_dir() / "fake-reconnect-01-offline.png"))
    # ... even across a page reload (localStorage draft)
    page.reload()
    expect(page.locator("#conn-state")).to_have_text("reconnecting…")

    # the server comes back: reconnect by itself, resume, and the edit reaches the server
    get(fake_server + "/test/drop?hold=0")
    expect(page.locator("#conn-state")).to_have_text("connected", timeout=20000)
    expect(page.locator(".text-editor")).to_contain_text("written while offline")
    expect(page.locator("#save-state")).to_have_attribute("data-state", "saved")
    assert get(f"{fake_server}/test/file/{ws_id}/notes.txt") == "written while offline"
    page.screenshot(path=str(shot_dir() / "fake-reconnect-02-resumed.png"))
    ctx.close()


def test_server_errors_in_words_and_csrf(browser, fake_server):
    ctx = browser.new_context()
    page = ctx.new_page()
    signup(page, fake_server, "dave")
    # sharing with an unknown user: the server's message is shown
    page.fill("#new-ws-name", "Errors")
    page.keyboard.press("Enter")
    expect(page.locator("#conn-state")).to_have_text("connected")
    page.goto(fake_server + "/#/")
    row = page.locator("tr", has=page.locator("a.ws-name", has_text="Errors"))
    row.get_by_role("button", name="Share").click()
    page.fill(".dialog input[name=username]", "nobody")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert").filter(has_text="No user called nobody")).to_be_visible()
    # a state-changing request without the X-XSRFToken header is refused by the backend (Tornado xsrf)
    status = page.evaluate(
        "() => fetch('/api/workspaces', {method: 'POST', body: '{\"name\": \"x\"}'}).then(r => r.status)"
    )
    assert status == 403
    ctx.close()


def test_workspace_and_file_management(browser, fake_server, tmp_path):
    ctx = browser.new_context(accept_downloads=True)
    page = ctx.new_page()
    page.set_default_timeout(20000)
    signup(page, fake_server, "erin")

    def dialog_ok(value):
        page.fill(".dialog input[name=name]", value)
        page.keyboard.press("Enter")

    # workspace list: create, rename, copy, delete
    page.fill("#new-ws-name", "First")
    page.keyboard.press("Enter")
    expect(page.locator("#conn-state")).to_have_text("connected")
    page.goto(fake_server + "/#/")
    row = page.locator("tr", has=page.locator("a.ws-name", has_text="First"))
    row.get_by_role("button", name="Rename").click()
    dialog_ok("Renamed")
    expect(page.locator("a.ws-name", has_text="Renamed")).to_be_visible()
    page.locator("tr", has=page.locator("a.ws-name", has_text="Renamed")).get_by_role(
        "button", name="Copy"
    ).click()
    dialog_ok("The copy")
    expect(page.locator("a.ws-name", has_text="The copy")).to_be_visible()
    page.locator("tr", has=page.locator("a.ws-name", has_text="The copy")).get_by_role(
        "button", name="Delete"
    ).click()
    page.get_by_role("button", name="Yes").click()
    expect(page.locator("a.ws-name", has_text="The copy")).to_have_count(0)
    page.screenshot(path=str(shot_dir() / "fake-manage-01-list.png"))

    # files: new folder, upload into it, download, rename, delete
    page.locator("a.ws-name", has_text="Renamed").click()
    page.click("#new-folder")
    dialog_ok("data")
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
    page.locator("ul.tree .name", has_text="n.csv").click()
    expect(page.locator(".text-editor")).to_contain_text("1,2,3")
    page.screenshot(path=str(shot_dir() / "fake-manage-02-files.png"))
    page.get_by_role("button", name="Delete n.csv").click()
    page.get_by_role("button", name="Yes").click()
    expect(page.locator("ul.tree .name", has_text="n.csv")).to_have_count(0)

    # the whole workspace as a zip
    with page.expect_download() as dl:
        page.get_by_role("link", name="Download .zip").click()
    assert dl.value.suggested_filename.endswith(".zip")
    ctx.close()


def test_editors_see_each_others_saves(browser, fake_server):
    a_ctx, b_ctx = browser.new_context(), browser.new_context()
    a, b = a_ctx.new_page(), b_ctx.new_page()
    for p in (a, b):
        p.set_default_timeout(20000)
    signup(b, fake_server, "frank")
    signup(a, fake_server, "grace")
    a.fill("#new-ws-name", "Together")
    a.keyboard.press("Enter")
    a.click("#new-file")
    a.fill(".dialog input[name=name]", "plan.txt")
    a.keyboard.press("Enter")
    expect(a.locator(".text-editor")).to_be_visible()
    ws_url = a.url
    a.goto(fake_server + "/#/")
    a.locator("tr", has=a.locator("a.ws-name", has_text="Together")).get_by_role(
        "button", name="Share"
    ).click()
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
    b.screenshot(path=str(shot_dir() / "fake-collab-01-editor-sees-change.png"))
    a_ctx.close()
    b_ctx.close()


def test_running_cell_streams_and_interrupts(browser, fake_server):
    ctx = browser.new_context()
    page = ctx.new_page()
    page.set_default_timeout(20000)
    signup(page, fake_server, "heidi")
    page.fill("#new-ws-name", "Long")
    page.keyboard.press("Enter")
    page.click("#new-worksheet")
    page.keyboard.press("Enter")
    cell = page.locator(".cell").first
    cell.locator("select.engine").select_option("python")
    cell.locator(".CodeMirror").click()
    page.keyboard.type("ticks(600)")
    page.keyboard.press("Control+Enter")
    # visibly running, output streaming in
    expect(cell).to_have_class(re.compile(r"\brunning\b"))
    expect(cell.locator(".cell-status")).to_have_text("running…")
    expect(cell.locator(".cell-output")).to_contain_text("tick 3")
    page.screenshot(path=str(shot_dir() / "fake-interrupt-01-running.png"))
    page.click("#interrupt")
    expect(cell).not_to_have_class(re.compile(r"\brunning\b"))
    expect(cell.locator(".cell-output")).to_contain_text("KeyboardInterrupt")
    expect(cell.locator(".out-interrupted")).to_have_text("Interrupted.")
    expect(cell.locator(".cell-status")).to_contain_text("interrupted")
    page.screenshot(path=str(shot_dir() / "fake-interrupt-02-interrupted.png"))
    # restart works and the cell runs again
    page.click("#restart")
    expect(page.locator(".flash.info", has_text="Engine restarted").first).to_be_visible()
    page.locator("button.run").first.click()
    expect(cell.locator(".cell-output")).to_contain_text("tick 1")
    page.click("#interrupt")
    expect(cell.locator(".cell-status")).to_contain_text("interrupted")
    ctx.close()


def test_run_all_and_clear_outputs(browser, fake_server):
    ctx = browser.new_context()
    page = ctx.new_page()
    page.set_default_timeout(20000)
    signup(page, fake_server, "ivan")
    page.fill("#new-ws-name", "All")
    page.keyboard.press("Enter")
    page.click("#new-worksheet")
    page.keyboard.press("Enter")
    page.locator(".cell").first.locator("select.engine").select_option("python")
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
    ctx.close()


def test_login_returns_to_the_requested_workspace(browser, fake_server):
    ctx = browser.new_context()
    page = ctx.new_page()
    page.set_default_timeout(20000)
    signup(page, fake_server, "judy", pw="pw-judy")
    page.fill("#new-ws-name", "Linked")
    page.keyboard.press("Enter")
    expect(page.locator(".ws-title")).to_have_text("Linked")
    url = page.url
    page.click("#logout")
    expect(page.locator("#username")).to_be_visible()
    page.goto(url)
    expect(page.locator("#username")).to_be_visible()
    page.fill("#username", "judy")
    page.fill("#password", "wrong")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert").filter(has_text="Wrong user name or password")).to_be_visible()
    page.fill("#password", "pw-judy")
    page.keyboard.press("Enter")
    expect(page.locator(".ws-title")).to_have_text("Linked")
    expect(page.locator("#conn-state")).to_have_text("connected")
    ctx.close()


@pytest.fixture(scope="module")
def worker_backend(vendor_built):
    """The fake backend relaying files, git and cells to a real `sagews worker` (as root: it makes users)."""
    if os.geteuid() != 0:
        pytest.skip("the worker runs as root (it creates a Unix user per workspace)")
    from sagews.devpki import DevCA

    base = service_dir("sagews-browser-worker-")
    base.chmod(0o755)
    (base / "pki").mkdir(mode=0o755)
    ca = DevCA(base / "pki")
    server, client = ca.issue("worker"), ca.issue("backend", server=False)
    have_sage = importlib.util.find_spec("sage.all__sagemath_symbolics") is not None
    cfg = {
        "host": "127.0.0.1",
        "port": 0,
        "cert": str(server.cert),
        "key": str(server.key),
        "ca": str(ca.ca_cert_path),
        "workspaces_dir": str(base / "workspaces"),
        "state_dir": str(base / "state"),
        "tmp_dir": str(base / "tmp"),
        "engines": ["python", "sage"] if have_sage else ["python"],
        "warm_pool": 1,
        **pool_config("br"),  # see tests/fixtures/users.py
    }
    (base / "worker.json").write_text(json.dumps(cfg))
    wlog = open(shot_dir() / "worker.log", "w")  # noqa: SIM115 (closed below)
    worker = subprocess.Popen(
        [sys.executable, "-m", "sagews.worker", "--config", str(base / "worker.json")],
        stdout=subprocess.PIPE,
        stderr=wlog,
    )
    line = worker.stdout.readline().decode()  # blocks until listening (or exit)
    if "listening on" not in line:
        worker.kill()
        pytest.fail(f"worker did not start: {line!r}; see {shot_dir() / 'worker.log'}")
    port = int(line.split()[3].rsplit(":", 1)[1])
    relay = {"host": "127.0.0.1", "port": port, "cert": str(client.cert), "key": str(client.key)}
    (base / "relay.json").write_text(json.dumps({**relay, "ca": str(ca.ca_cert_path)}))
    with start_fake(["--worker", str(base / "relay.json")], "fake-backend-worker.log") as url:
        yield url
    worker.terminate()
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        worker.kill()
    worker.stdout.close()
    wlog.close()
    shutil.rmtree(base, ignore_errors=True)


def test_journey_with_a_real_worker(browser, worker_backend):
    """Real Sage (when installed) or Python output, real git saves, history and reads at a commit."""
    if dev_help()[0] is None and not os.environ.get("SAGEWS_DEV_CMD"):
        pytest.skip("covered by test_browser_journey.py against `sagews dev` (same journey, real backend)")
    journey(browser, worker_backend, "worker-journey")


def test_real_worker_outputs_render(browser, worker_backend):
    """Errors, LaTeX, HTML (sandboxed) and an output flood as the real worker sends them."""
    ctx = browser.new_context()
    page = ctx.new_page()
    page.set_default_timeout(30000)
    watch = ConsoleWatch(page)
    signup(page, worker_backend, "kim")
    page.fill("#new-ws-name", "Outputs")
    page.keyboard.press("Enter")
    page.click("#new-worksheet")
    page.keyboard.press("Enter")
    sage = importlib.util.find_spec("sage.all__sagemath_symbolics") is not None
    if not sage:
        page.locator(".cell").first.locator("select.engine").select_option("python")
    cells = page.locator(".cell")
    cells.first.locator(".CodeMirror").click()
    for code in [
        "1/0",
        "html('<b>bold</b><img src=x onerror=\"parent.__xss=1\">')",
        "print('x' * 3000000)",
        *(["latex(x^2/2)"] if sage else []),
    ]:
        page.keyboard.type(code)
        page.keyboard.press("Shift+Enter")
    for i in range(cells.count() - 1):
        expect(cells.nth(i)).not_to_have_class(re.compile(r"\brunning\b"), timeout=60000)
    expect(cells.nth(0).locator(".out-error")).to_contain_text("ZeroDivisionError")
    expect(cells.nth(1).locator("iframe.out-html")).to_have_attribute("sandbox", "")
    expect(cells.nth(1).frame_locator("iframe.out-html").locator("b")).to_have_text("bold")
    expect(cells.nth(2).locator(".cell-output")).to_contain_text("truncated")
    if sage:
        expect(cells.nth(3).locator(".katex")).to_have_count(1)
    page.screenshot(path=str(shot_dir() / "worker-outputs.png"), full_page=True)
    assert page.evaluate("() => window.__xss") is None
    assert watch.errors == []
    ctx.close()
