"""Constants and helpers shared by the browser tests (a uniquely named module: `conftest` is ambiguous)."""

import contextlib
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from playwright.sync_api import expect

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
        self.allowed: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def allow(self, text: str) -> None:
        """An error the test provokes on purpose (e.g. the 404 of an unpublished page) is not a failure."""
        self.allowed.append(text)

    # The sandboxed output iframe refusing a script is the sandbox working, not an error of ours.
    IGNORED = ("Blocked script execution in 'about:srcdoc' because the document's frame is sandboxed",)
    # Chromium checks the CSP when an on*= or style= attribute is *parsed*, also in DOMPurify's inert
    # document: a user's hostile Markdown/HTML logs these before the sanitizer drops the attributes.
    # Tests that feed such input say so with allow_hostile_html(); everywhere else they are failures.
    HOSTILE_HTML = (
        "Executing inline event handler violates the following Content Security Policy",
        "Applying inline style violates the following Content Security Policy",
    )

    def allow_hostile_html(self) -> None:
        self.allowed.extend(self.HOSTILE_HTML)

    def _console(self, msg):
        if msg.type != "error" or msg.text.startswith(self.IGNORED):
            return
        if not any(a in msg.text for a in self.allowed):
            self.errors.append(f"console.error: {msg.text}")


class TcpProxy:
    """A loopback TCP forwarder in front of a server, to cut the network under a page (reconnect tests).

    ``cut()`` closes every forwarded connection and refuses new ones until ``restore()``: what a browser
    sees when the network or a load balancer drops, with the real server still running behind it.
    """

    def __init__(self, port: int) -> None:
        import socket
        import threading

        self.target = ("127.0.0.1", port)
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.held = False
        self.conns: set = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.lsock.accept()
            except OSError:
                return
            if self.held:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst) -> None:
        import socket

        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
            with self.lock:
                self.conns.discard(s)

    def cut(self) -> None:
        import socket

        self.held = True
        with self.lock:
            conns = list(self.conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self.held = False

    def close(self) -> None:
        self.cut()
        self.lsock.close()


# ---- `sagews dev` (the real backend + worker + log server on 127.0.0.1) -----------------------------------
SAGEWS = shutil.which("sagews") or str(Path(sys.executable).with_name("sagews"))


def dev_help() -> tuple[str | None, str]:
    """(reason to skip or None, `sagews dev --help` text)."""
    if os.environ.get("SAGEWS_DEV_CMD"):
        return None, ""
    if not Path(SAGEWS).exists():
        return f"{SAGEWS} not found", ""
    r = subprocess.run([SAGEWS, "dev", "--help"], capture_output=True, text=True, timeout=60, check=False)
    if r.returncode != 0:
        last = ((r.stderr or r.stdout).strip().splitlines() or ["?"])[-1]
        return "`sagews dev` does not exist: " + last[:200], ""
    return None, r.stdout + r.stderr


def dev_command(help_text: str, port: int, data: Path, workspaces: Path) -> list[str]:
    """The `sagews dev` command line (or SAGEWS_DEV_CMD with {port}, {data}, {workspaces}). Each
    `sagews dev` instance (data dir) has its own workspace users, so test runs never share them."""
    tmpl = os.environ.get("SAGEWS_DEV_CMD")
    if tmpl:
        return shlex.split(tmpl.format(port=port, data=data, workspaces=workspaces))
    cmd = [SAGEWS, "dev", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data)]
    if "--workspaces-dir" in help_text:
        cmd += ["--workspaces-dir", str(workspaces)]
    return cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- page steps shared by the tests ---------------------------------------------------------------------
PASSWORD = "correct horse battery"


def snap(page, name: str) -> None:
    """A full-page screenshot, build/test-logs/browser/<page.shot_prefix>-<name>.png."""
    prefix = getattr(page, "shot_prefix", "shot")
    page.screenshot(path=str(shot_dir() / f"{prefix}-{name}.png"), full_page=True)


def signup(page, base: str, user: str, pw: str = PASSWORD) -> None:
    page.goto(base + "/")
    page.fill("#username", user)
    page.fill("#password", pw)
    page.click("#signup")
    expect(page.locator("#create-ws")).to_be_visible()


def new_workspace(page, name: str) -> str:
    """Creates a workspace from the list page; returns its id once the page is connected."""
    page.fill("#new-ws-name", name)
    page.keyboard.press("Enter")
    expect(page.locator("#conn-state")).to_have_text("connected")
    expect(page.locator("ul.tree li").first).to_be_attached()  # opened: the file list is there
    return page.url.split("#/w/")[1].split("/")[0]


def new_file(page, kind: str, name: str) -> None:
    """kind: worksheet, file or folder (the tree's New ... buttons)."""
    page.click(f"#new-{kind}")
    page.fill(".dialog input[name=name]", name)
    page.keyboard.press("Enter")


def set_cell(page, index: int, code: str, kind: str | None = None):
    """Puts code into a cell (typed when it is one line; set when multi-line: CodeMirror auto-indents)."""
    cell = page.locator(".cell").nth(index)
    if kind:
        cell.locator("select.engine").select_option(kind)
    cell.locator(".CodeMirror").click()
    if "\n" in code:
        cell.locator(".CodeMirror").evaluate("(e, code) => e.CodeMirror.setValue(code)", code)
    else:
        page.keyboard.press("Control+A")
        page.keyboard.type(code)
    return cell


def wait_done(cell, timeout: int = 60000) -> None:
    expect(cell).not_to_have_class(re.compile(r"\brunning\b"), timeout=timeout)
    expect(cell.locator(".cell-status")).not_to_have_text("", timeout=timeout)


def run_cell(page, index: int, code: str, kind: str | None = None):
    """Puts code into cell ``index``, runs it with Shift-Enter, waits until it finished."""
    cell = set_cell(page, index, code, kind)
    page.keyboard.press("Shift+Enter")
    if re.match(r"%(md|html)\b", code) or kind in ("markdown", "html"):
        expect(cell.locator(".cell-rendered")).to_be_visible()  # a text cell: shown, not run
    else:
        wait_done(cell)
    return cell
