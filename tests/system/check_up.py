"""After `make up`: what an operator does first, in a real browser (Debian's Chromium through Playwright).

Signs in at the printed URL as the printed admin, creates a workspace and a worksheet, runs Sage's
``factor(2^64-1)`` and checks the answer; TLS is checked with the appliance CA (curl --cacert), since
Chromium is not given that CA. Exits non-zero with the step that failed; screenshots in build/up-check/.

    .venv/bin/python tests/system/check_up.py [--url https://localhost/] [--inventory container]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "browser"))

from browser_helpers import CHROMIUM, CHROMIUM_ARGS, new_file, new_workspace, run_cell  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

FACTORS = "3 * 5 * 17 * 257 * 641 * 65537 * 6700417"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="https://localhost/")
    ap.add_argument("--inventory", default="container", help="inventory name: where make up put the state")
    ap.add_argument("--user", default=os.environ.get("SAGEWS_ADMIN_USER", "admin"))
    args = ap.parse_args()
    home = Path.home() / ".sagews"
    ca = home / "pki" / args.inventory / "ca" / "ca.crt"
    password = (home / "state" / args.inventory / "admin.password").read_text().split()[0]
    shots = ROOT / "build" / "up-check"
    shots.mkdir(parents=True, exist_ok=True)

    # TLS with the appliance CA, and HTTPS only (curl verifies the name against the certificate).
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(ca), args.url + "healthz"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if out.stdout != "200":
        print(f"FAIL tls: curl --cacert {ca} {args.url}healthz gave {out.stdout!r} {out.stderr.strip()}")
        return 1
    print(f"ok   TLS verified with {ca}: {args.url}healthz 200")

    t0 = time.monotonic()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_context(ignore_https_errors=True).new_page()
        try:
            page.goto(args.url)
            page.fill("#username", args.user)
            page.fill("#password", password)
            page.click("#login")
            expect(page.locator("#create-ws")).to_be_visible()
            print(f"ok   signed in as {args.user}")
            new_workspace(page, f"up-check {time.strftime('%H%M%S')}")
            new_file(page, "worksheet", "first.sagews")
            print("ok   workspace and worksheet created")
            cell = run_cell(page, 0, "factor(2^64-1)")
            expect(cell.locator(".cell-output")).to_contain_text(FACTORS, timeout=60000)
            page.screenshot(path=str(shots / "factor.png"), full_page=True)
            print(f"ok   Sage: factor(2^64-1) = {FACTORS} ({time.monotonic() - t0:.1f} s from sign-in page)")
        except Exception as exc:  # the step that failed, with a screenshot of the page at that moment
            page.screenshot(path=str(shots / "failure.png"), full_page=True)
            print(f"FAIL {type(exc).__name__}: {exc}\n(screenshot: {shots / 'failure.png'})")
            return 1
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
