"""The whole journey in Chromium against `sagews dev` (real backend, real worker on 127.0.0.1).

Skipped, with the reason printed, only when the `sagews dev` command does not exist yet.
`SAGEWS_DEV_CMD` overrides the command line ({port} and {data} are filled in).
"""

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from browser_helpers import ROOT, ConsoleWatch, shot_dir
from playwright.sync_api import expect

from tests.fixtures.dirs import service_dir

SAGEWS = shutil.which("sagews") or str(Path(sys.executable).with_name("sagews"))
FACTORS = "3 * 5 * 17 * 257 * 641 * 65537 * 6700417"
PY_FACTOR = """def factor(n):
    f, d = [], 2
    while n > 1:
        while n % d == 0:
            f.append(d)
            n //= d
        d += 1
    return f

factor(2**64 - 1)"""
PY_PLOT = "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nplt.plot([1, 4, 2, 3])"


def dev_help() -> tuple[str | None, str]:
    """(reason to skip or None, `sagews dev --help` text)."""
    if os.environ.get("SAGEWS_DEV_CMD"):
        return None, ""
    if not Path(SAGEWS).exists():
        return f"{SAGEWS} not found", ""
    r = subprocess.run([SAGEWS, "dev", "--help"], capture_output=True, text=True, timeout=60, check=False)
    if r.returncode != 0:
        last = ((r.stderr or r.stdout).strip().splitlines() or ["?"])[-1]
        return "`sagews dev` does not exist yet: " + last[:200], ""
    return None, r.stdout + r.stderr


def dev_command(help_text: str, port: int, data: Path, workspaces: Path) -> list[str]:
    """The `sagews dev` command line, using the options its --help offers (or SAGEWS_DEV_CMD)."""
    tmpl = os.environ.get("SAGEWS_DEV_CMD")
    if tmpl:
        return shlex.split(tmpl.format(port=port, data=data))
    cmd = [SAGEWS, "dev"]
    for opts, value in (
        (("--host", "--address", "--bind"), "127.0.0.1"),
        (("--port",), str(port)),
        (("--data-dir", "--data", "--state-dir", "--dir", "--root"), str(data)),
        (("--workspaces-dir",), str(workspaces)),
    ):
        for o in opts:
            if re.search(rf"(^|[\s,\[]){re.escape(o)}\b", help_text):
                cmd += [o, value]
                break
    return cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dev_server(vendor_built):
    reason, help_text = dev_help()
    if reason:
        print(f"SKIP browser journey: {reason}")
        pytest.skip(reason)
    port = free_port()
    # not under pytest's 0700 tmp tree: the worker's workspace users must traverse to their checkouts
    data = Path(tempfile.mkdtemp(prefix="sagews-browser-dev-", dir="/tmp"))
    workspaces = service_dir("sagews-browser-ws-")  # not under /tmp: workspaces get private ones
    cmd = dev_command(help_text, port, data, workspaces)
    log_path = shot_dir() / "sagews-dev.log"
    log = open(log_path, "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    port_given = "--port" in cmd or "{port}" in os.environ.get("SAGEWS_DEV_CMD", "")
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(base + "/api/me", timeout=2):  # noqa: S310 (http://127.0.0.1)
                break
        except urllib.error.HTTPError:
            break
        except OSError:
            if not port_given:
                # no --port option: take the URL the server prints
                m = re.search(r"http://127\.0\.0\.1:(\d+)", log_path.read_text(errors="replace"))
                if m:
                    base = f"http://127.0.0.1:{m.group(1)}"
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log.close()
                pytest.fail(f"`{' '.join(cmd)}` did not serve {base}; see {shot_dir() / 'sagews-dev.log'}")
            time.sleep(0.2)
    yield base
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(workspaces, ignore_errors=True)


def snap(page, name):
    page.screenshot(path=str(shot_dir() / f"{page.shot_prefix}-{name}.png"), full_page=True)


def signup(page, base, user, pw="correct horse battery"):
    page.goto(base + "/")
    page.fill("#username", user)
    page.fill("#password", pw)
    page.click("#signup")
    expect(page.locator("#create-ws")).to_be_visible()


def run_cell(page, index, code, engine=None):
    """Types one-line code with the keyboard (multi-line code is set, since CodeMirror auto-indents)."""
    cell = page.locator(".cell").nth(index)
    if engine:
        cell.locator("select.engine").select_option(engine)
    cell.locator(".CodeMirror").click()
    if "\n" in code:
        cell.locator(".CodeMirror").evaluate("(e, code) => e.CodeMirror.setValue(code)", code)
    else:
        page.keyboard.press("Control+A")
        page.keyboard.type(code)
    page.keyboard.press("Shift+Enter")
    expect(cell).not_to_have_class(re.compile(r"\brunning\b"), timeout=60000)
    expect(cell.locator(".cell-status")).not_to_have_text("", timeout=60000)
    return cell


def test_whole_journey(browser, dev_server):
    journey(browser, dev_server, "journey")


def journey(browser, base, prefix):
    """Sign up, worksheet, factor, plot, save, reload, history, restore, share read-only, publish."""
    alice_ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    bob_ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    anon_ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    alice, bob, anon = alice_ctx.new_page(), bob_ctx.new_page(), anon_ctx.new_page()
    for p in (alice, bob, anon):
        p.set_default_timeout(20000)
        p.shot_prefix = prefix
        p.watch = ConsoleWatch(p)

    # sign up both accounts
    signup(bob, base, "bob")
    signup(alice, base, "alice")
    snap(alice, "01-signed-up")

    # create a workspace and a worksheet
    alice.fill("#new-ws-name", "Journey")
    alice.keyboard.press("Enter")
    expect(alice.locator("#conn-state")).to_have_text("connected")
    alice.click("#new-worksheet")
    alice.fill(".dialog input[name=name]", "demo.sagews")
    alice.keyboard.press("Enter")
    expect(alice.locator(".cell")).to_have_count(1)
    snap(alice, "02-new-worksheet")

    # factor(2^64-1): Sage when the worker has it, Python otherwise
    cell = run_cell(alice, 0, "factor(2^64-1)")
    out = cell.locator(".cell-output")
    expect(out).not_to_be_empty()
    text = out.text_content() or ""
    sage = "not installed" not in text and "unavailable" not in text
    if sage:
        expect(out).to_contain_text(FACTORS)
        plot = run_cell(alice, 1, "plot(sin(x), 0, 2*pi)")
    else:
        cell = run_cell(alice, 0, PY_FACTOR, engine="python")
        expect(cell.locator(".cell-output")).to_contain_text("[3, 5, 17, 257, 641, 65537, 6700417]")
        plot = run_cell(alice, 1, PY_PLOT, engine="python")
    snap(alice, "03-factor")
    # a plot appears
    expect(plot.locator("img.out-img")).to_be_visible(timeout=60000)
    snap(alice, "04-plot")

    # save a version; reload and see it
    alice.click("#save")
    expect(alice.locator("#save-state")).to_have_attribute("data-state", "saved")
    expect(alice.locator(".flash.info", has_text="Saved version").first).to_be_visible()
    alice.reload()
    expect(alice.locator(".cell").nth(0).locator(".cell-output")).to_contain_text("65537")
    expect(alice.locator(".cell").nth(1).locator("img.out-img")).to_be_visible()
    snap(alice, "05-reloaded")

    # history shows the save; change something, save, restore the old version
    alice.click("#history-btn")
    expect(alice.locator("ul.commits li").first).to_contain_text("Save demo.sagews")
    first = alice.locator(".cell").nth(0)
    first.locator(".CodeMirror").click()
    alice.keyboard.press("Control+End")
    alice.keyboard.type("  # changed")
    alice.keyboard.press("Control+S")
    expect(alice.locator("#save-state")).to_have_attribute("data-state", "saved")
    alice.click("#history-btn")
    alice.click("#history-btn")
    old = alice.locator("ul.commits li").filter(has_text="Save demo.sagews").last
    old.locator("button.commit").click()
    expect(alice.locator(".preview h3")).to_be_visible()
    snap(alice, "06-history")
    alice.click("#restore-version")
    expect(alice.locator(".cell").nth(0).locator(".CodeMirror")).not_to_contain_text("# changed")
    expect(alice.locator("ul.commits li").first).to_contain_text("Restore demo.sagews", timeout=20000)
    snap(alice, "07-restored")

    # share with bob as a viewer: he sees it read-only; presence shows both
    ws_url = alice.url
    alice.goto(base + "/#/")
    row = alice.locator("tr", has=alice.locator("a.ws-name", has_text="Journey"))
    row.get_by_role("button", name="Share").click()
    alice.fill(".dialog input[name=username]", "bob")
    alice.select_option(".dialog select[name=role]", "viewer")
    alice.keyboard.press("Enter")
    expect(alice.locator(".flash.info", has_text="Shared with bob").first).to_be_visible()
    alice.goto(ws_url)
    bob.reload()
    bob.locator("a.ws-name", has_text="Journey").click()
    bob.locator("ul.tree .name", has_text="demo.sagews").click()
    expect(bob.locator(".role-badge")).to_contain_text("read-only")
    expect(bob.locator(".cell").nth(0).locator(".cell-output")).to_contain_text("65537")
    expect(bob.locator("#save")).to_have_count(0)
    expect(bob.locator("#new-worksheet")).to_have_count(0)
    expect(bob.locator(".cell button.run").first).to_be_disabled()
    bob.locator(".cell").nth(0).locator(".CodeMirror").click()
    bob.keyboard.type("oops")
    expect(bob.locator(".cell").nth(0).locator(".CodeMirror")).not_to_contain_text("oops")
    expect(alice.locator(".presence")).to_contain_text("bob", timeout=20000)
    snap(bob, "08-bob-read-only")
    snap(alice, "09-presence")
    bob.locator("a.back").click()  # bob leaves the workspace: alice sees it
    expect(bob.locator("#create-ws")).to_be_visible()
    expect(alice.locator(".presence")).not_to_contain_text("bob")

    # publish and read it logged out
    alice.click("#publish")
    link = alice.locator("#pub-url")
    expect(link).to_be_visible()
    url = link.get_attribute("href")
    anon.goto(base + url)
    expect(anon.locator(".cell-output").first).to_contain_text("65537")
    expect(anon.locator("img.out-img")).to_be_visible()
    snap(anon, "10-published")
    assert [p.watch.errors for p in (alice, bob, anon)] == [[], [], []]
    alice.reload()  # the link is shown again for a published file
    expect(alice.locator("#pub-url")).to_have_attribute("href", url)
    alice.click("#unpublish")
    expect(alice.locator(".flash.info", has_text="Unpublished").first).to_be_visible()
    anon.reload()
    expect(anon.locator("#pub")).to_contain_text("not published")

    for c in (alice_ctx, bob_ctx, anon_ctx):
        c.close()
