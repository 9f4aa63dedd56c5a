"""Constants and helpers shared by the browser tests (a uniquely named module: `conftest` is ambiguous)."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "static"
CHROMIUM = os.environ.get("SAGEWS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
# The policy docs/frontend.md asks the backend to send; the static test server sends it too.
# SAGEWS_TEST_CSP tries another policy (e.g. the one a deployment role sends).
DEFAULT_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "font-src 'self'; connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'; object-src 'none'"
)
CSP = os.environ.get("SAGEWS_TEST_CSP", DEFAULT_CSP)


def shot_dir() -> Path:
    base = Path(os.environ.get("SAGEWS_TEST_LOGS", ROOT / "build" / "test-logs"))
    d = base / "browser"
    d.mkdir(parents=True, exist_ok=True)
    return d


class ConsoleWatch:
    """Collects console errors, page errors and CSP violations of one page."""

    def __init__(self, page):
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    # The sandboxed output iframe refusing a script is the sandbox working, not an error of ours.
    IGNORED = ("Blocked script execution in 'about:srcdoc' because the document's frame is sandboxed",)

    def _console(self, msg):
        if msg.type == "error" and not msg.text.startswith(self.IGNORED):
            self.errors.append(f"console.error: {msg.text}")
