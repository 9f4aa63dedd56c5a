"""Browser tests: Playwright (Python) driving Debian's Chromium headless.

Playwright's own browser download does not work here: we launch /usr/bin/chromium. Screenshots go to
build/test-logs/browser/ (or $SAGEWS_TEST_LOGS/browser/).
"""

import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest
from browser_helpers import CHROMIUM, CHROMIUM_ARGS, CSP, ROOT, STATIC, ConsoleWatch


@pytest.fixture(scope="session")
def vendor_built():
    if not (STATIC / "vendor" / "VERSIONS").exists():
        if shutil.which("npm") is None:
            pytest.fail("static/vendor/ is missing and npm is not installed: run static/build.sh")
        import subprocess

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
