"""The workspace terminal and Tab completion against the real `sagews dev` (backend, worker as root,
SQLite), in Chromium under the app's CSP: the shell runs as the workspace's own user with its limits,
survives a reload (reattached by id, its scrollback replayed), fits a 360 px screen; Tab in a cell
completes from the engine's namespace."""

import re

from browser_helpers import PASSWORD, new_file, new_workspace, run_cell, set_cell, signup, snap
from playwright.sync_api import expect

PHONE = {"width": 360, "height": 740}


def screen(page):
    return page.locator("#terminal-view .term-screen:not([hidden]) .xterm-rows")


def term_type(page, text: str) -> None:
    page.locator("#terminal-view .term-screen:not([hidden]) .xterm").click()
    page.keyboard.type(text)


def test_terminal_and_completion(pages, dev_server):
    page = pages("terminal")
    signup(page, dev_server, "tina")
    ws = new_workspace(page, "Terminal")
    new_file(page, "worksheet", "t.sagews")
    expect(page.locator(".cell")).to_have_count(1)
    cell = run_cell(
        page, 0, "import os, pwd; print('ENGINE-USER=' + pwd.getpwuid(os.getuid()).pw_name)", kind="python"
    )
    expect(cell.locator(".cell-output")).to_contain_text(re.compile(r"ENGINE-USER=\w"))
    out = cell.locator(".cell-output").inner_text()
    engine_user = re.search(r"ENGINE-USER=(\w+)", out).group(1)

    # the terminal: the same user, the workspace's limits
    page.click("#terminal-toggle")
    expect(page.locator("#terminal-view")).to_be_visible()
    expect(screen(page)).to_contain_text("$", timeout=20000)  # the prompt
    term_type(page, "echo $USER; ulimit -a\n")
    expect(screen(page)).to_contain_text("max user processes", timeout=20000)
    lines = [x.strip() for x in screen(page).inner_text().splitlines()]
    assert engine_user in lines, lines  # echo $USER printed the workspace's user on a line of its own
    assert any(re.match(r"max user processes\s+\(-u\) \d+$", x) for x in lines), lines
    assert any(re.match(r"open files\s+\(-n\) 256$", x) for x in lines), lines
    term_type(page, "stty size\n")
    expect(screen(page)).to_contain_text(re.compile(r"stty size\s*\d+ \d+"))
    snap(page, "01-terminal")

    # a second terminal, then a reload: both come back, reattached with their scrollback
    page.click("#new-terminal")
    expect(page.locator(".term-tab")).to_have_count(2)
    expect(screen(page)).to_contain_text("$", timeout=20000)
    term_type(page, "echo SECOND-$((20+3))\n")
    expect(screen(page)).to_contain_text("SECOND-23")
    page.reload()
    expect(page.locator("#terminal-view")).to_be_visible(timeout=20000)
    expect(page.locator(".term-tab")).to_have_count(2)
    page.locator(".term-tab button[role=tab]").nth(0).click()
    expect(screen(page)).to_contain_text("max user processes")
    snap(page, "02-terminal-after-reload")

    # keystroke -> echo, measured in the page: keydown to the echo's term_output frame arriving (browser ->
    # SockJS -> backend -> worker -> pty -> shell -> back), and to xterm.js re-rendering the row
    page.evaluate(
        """() => { window.__lat = []; window.__net = []; window.__wire = []; let t0 = 0, t1 = 0, t2 = 0;
        const c = SW.app.state.conn, onMessage = c._onMessage.bind(c);
        c._onMessage = (raw) => { if (t1 && String(raw).includes('term_output')) {
          window.__net.push(performance.now() - t1); window.__wire.push(performance.now() - t2); t1 = 0; }
          onMessage(raw); };
        const s = SW.app.state.ws.session, input = s.termInput;
        s.termInput = (...a) => { t2 = performance.now(); return input(...a); };
        document.addEventListener('keydown', () => { t0 = t1 = performance.now(); }, true);
        const rows = document.querySelector('#terminal-view .term-screen:not([hidden]) .xterm-rows');
        new MutationObserver(() => { if (t0) { window.__lat.push(performance.now() - t0); t0 = 0; } })
          .observe(rows, {subtree: true, childList: true, characterData: true}); }"""
    )
    page.locator("#terminal-view .term-screen:not([hidden]) .xterm").click()
    page.keyboard.type("abcdefghijklmnopqrst", delay=80)
    expect(screen(page)).to_contain_text("abcdefghijklmnopqrst")
    lat = sorted(page.evaluate("() => window.__lat"))
    net = sorted(page.evaluate("() => window.__net"))
    wire = sorted(page.evaluate("() => window.__wire"))
    assert len(lat) >= 15 and len(net) >= 15, (lat, net)
    print(
        f"browser keystroke->echo: term_input sent -> term_output back median {wire[len(wire) // 2]:.1f} ms; "
        f"keydown -> frame back median {net[len(net) // 2]:.1f} ms (max {net[-1]:.1f}), "
        f"on screen after median {lat[len(lat) // 2]:.1f} ms (max {lat[-1]:.1f}) over {len(lat)} keys"
    )
    page.keyboard.press("Control+U")

    # Tab completion in a cell, answered by the workspace's engine
    page.click("#terminal-toggle")
    expect(page.locator(".cell").first).to_be_visible()
    run_cell(page, 0, "from math import factorial", kind="python")
    expect(page.locator(".cell")).to_have_count(2)
    cell = set_cell(page, 1, "x = facto", kind="python")
    page.keyboard.press("Tab")
    expect(cell.locator(".CodeMirror-line").first).to_have_text("x = factorial")
    # several matches: a list to choose from (Enter takes the first)
    set_cell(page, 1, "import os; os.pat", kind="python")
    page.keyboard.press("End")
    page.keyboard.press("Tab")
    expect(page.locator(".CodeMirror-hints")).to_be_visible()
    page.keyboard.press("Enter")
    expect(cell.locator(".CodeMirror-line").first).to_contain_text("os.path")
    # `name?` shows the docstring
    run_cell(page, 1, "factorial?", kind="python")
    expect(cell.locator(".cell-output")).to_contain_text("factorial")
    snap(page, "03-completion")

    # at 360 px: the terminal fits, nothing scrolls sideways
    phone = pages("terminal-360", viewport=PHONE, has_touch=True)
    phone.goto(dev_server + "/")
    phone.fill("#username", "tina")
    phone.fill("#password", PASSWORD)
    phone.click("#login")
    expect(phone.locator("#create-ws")).to_be_visible()
    phone.goto(dev_server + f"/#/w/{ws}")
    expect(phone.locator("#conn-state")).to_have_text("connected")
    phone.click("#terminal-toggle")
    expect(phone.locator(".term-tab")).to_have_count(2)
    expect(screen(phone)).to_contain_text("$", timeout=20000)
    term_type(phone, "echo NARROW-OK; stty size; echo NARROW-OK\n")
    expect(screen(phone)).to_contain_text(re.compile(r"NARROW-OK\s*\d+ \d+\s*NARROW-OK"))
    cols = int(re.search(r"NARROW-OK\s*(\d+) (\d+)\s*NARROW-OK", screen(phone).inner_text()).group(2))
    assert 20 <= cols <= 48, cols  # fitted to the narrow screen (about 7.8 px a column)
    width = phone.evaluate("() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)")
    assert width <= 360, width
    box = phone.locator("#terminal-view .term-screens").bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= 360, box
    snap(phone, "01-terminal-360px")
