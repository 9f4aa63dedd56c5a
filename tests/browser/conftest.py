"""Browser tests: Playwright (Python) driving Debian's Chromium headless.

Playwright's own browser download does not work here: we launch /usr/bin/chromium. Screenshots go to
build/test-logs/browser/ (or $SAGEWS_TEST_LOGS/browser/). Everything that needs a server runs against
one real `sagews dev` (backend, worker, log server; SQLite) started once per test session.
"""

import functools
import http.server
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from browser_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    CSP,
    ROOT,
    STATIC,
    ConsoleWatch,
    dev_command,
    dev_help,
    free_port,
    shot_dir,
)

from tests.fixtures.dirs import remove_service_dir, service_dir


@pytest.fixture(scope="session")
def vendor_built():
    if not (STATIC / "vendor" / "VERSIONS").exists():
        if shutil.which("npm") is None:
            pytest.fail("static/vendor/ is missing and npm is not installed: run static/build.sh")
        subprocess.run(["bash", str(STATIC / "build.sh")], check=True)
    return STATIC / "vendor"


# Module scope, not session: while Playwright's sync API runs it keeps an asyncio loop marked as running
# in this thread, which would break the asyncio tests of other suites collected after this directory.
@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (tests/harness/lib.sh APT_TEST)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class _StaticHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the repository root (so /static/... works) and / -> static/index.html, with the CSP header."""

    def translate_path(self, path):
        p = path.split("?", 1)[0].split("#", 1)[0]
        if p in ("/", "/index.html"):
            path = "/static/index.html"
        elif p.startswith("/pub/"):
            path = "/static/pub.html"
        return super().translate_path(path)

    def end_headers(self):
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def static_server(vendor_built):
    handler = functools.partial(_StaticHandler, directory=str(ROOT))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    p = ctx.new_page()
    p.set_default_timeout(15000)
    p.watch = ConsoleWatch(p)
    yield p
    ctx.close()


@pytest.fixture
def pages(browser):
    """``pages(prefix, **context_options)`` -> a fresh page (own cookies) with a ConsoleWatch as
    ``.watch`` and screenshots named ``<prefix>-...``; the test fails if any of them logged an error."""
    made = []

    def make(prefix, **opts):
        opts.setdefault("viewport", {"width": 1280, "height": 900})
        ctx = browser.new_context(**opts)
        p = ctx.new_page()
        p.set_default_timeout(20000)
        p.shot_prefix = prefix
        p.watch = ConsoleWatch(p)
        made.append((ctx, p))
        return p

    yield make
    errors = [e for _, p in made for e in p.watch.errors]
    for ctx, _ in made:
        ctx.close()
    assert errors == [], errors


@pytest.fixture(scope="session")
def dev_server(vendor_built):
    """One `sagews dev` for the whole session: its URL. Skipped (reason printed) only if the command is
    missing. Runs as root (the worker makes a Unix user per workspace) with this checkout's user prefix."""
    reason, help_text = dev_help()
    if reason:
        print(f"SKIP browser tests against sagews dev: {reason}")
        pytest.skip(reason)
    port = free_port()
    # not under pytest's 0700 tmp tree: the worker's workspace users must traverse to their checkouts
    data = Path(tempfile.mkdtemp(prefix="sagews-browser-dev-", dir="/tmp"))
    workspaces = service_dir("sagews-browser-ws-")  # not under /tmp: workspaces get private ones
    cmd = dev_command(help_text, port, data, workspaces)
    log_path = shot_dir() / "sagews-dev.log"
    log = open(log_path, "w")  # noqa: SIM115 (closed below)
    # this checkout's code, also when the venv's editable install points at another worktree
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(base + "/api/me", timeout=2):  # noqa: S310 (http://127.0.0.1)
                break
        except urllib.error.HTTPError:
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log.close()
                pytest.fail(f"`{' '.join(cmd)}` did not serve {base}; see {log_path}")
            time.sleep(0.2)
    yield base
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    shutil.rmtree(data, ignore_errors=True)
    remove_service_dir(workspaces)


@pytest.fixture(scope="session")
def has_sage(dev_server):
    """Whether the dev worker runs Sage (the journey falls back to Python where it does not)."""
    from importlib.util import find_spec

    if os.environ.get("SAGEWS_TEST_NO_SAGE") == "1":
        return False
    return find_spec("sage.all__sagemath_symbolics") is not None
