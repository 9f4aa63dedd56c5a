"""Layout against the real `sagews dev`: usable at 360 px (no sideways scrolling, full-width editors, the
file list a drawer), everything reachable with the keyboard, and a dark theme that follows
prefers-color-scheme."""

import re

from browser_helpers import new_file, new_workspace, run_cell, signup, snap
from playwright.sync_api import expect

PHONE = {"width": 360, "height": 740}


def page_width(page) -> int:
    return page.evaluate("() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)")


def test_usable_at_360_px(pages, dev_server, has_sage):
    page = pages("phone-360", viewport=PHONE, has_touch=True)
    page.goto(dev_server + "/")
    expect(page.locator("#username")).to_be_visible()
    assert page_width(page) <= 360
    snap(page, "01-login")
    signup(page, dev_server, "sam")
    new_workspace(page, "A workspace with a long name for a small screen")
    page.goto(dev_server + "/#/")
    expect(page.locator("a.ws-name")).to_be_visible()
    assert page_width(page) <= 360
    snap(page, "02-list")
    page.locator("a.ws-name").click()

    # the file list is a drawer: closed, opened by its button, closed again by opening a file
    expect(page.locator("#files-nav")).to_be_hidden()
    page.click("#files-toggle")
    expect(page.locator("#files-nav")).to_be_visible()
    expect(page.locator("#files-toggle")).to_have_attribute("aria-expanded", "true")
    new_file(page, "worksheet", "phone.sagews")
    expect(page.locator(".cell")).to_have_count(1)
    expect(page.locator("#files-nav")).to_be_hidden()
    page.click("#files-toggle")
    snap(page, "03-files-drawer")
    assert page_width(page) <= 360
    page.locator("ul.tree .name", has_text="phone.sagews").click()
    expect(page.locator("#files-nav")).to_be_hidden()

    # cells use the width: editors and outputs, nothing wider than the screen
    code = "factor(2^64-1)" if has_sage else "print(2**64 - 1)"
    run_cell(page, 0, code, kind=None if has_sage else "python")
    run_cell(page, 1, "print('a long line of output ' * 20)", kind="python")
    widths = page.locator(".cell .CodeMirror").evaluate_all(
        "es => es.map(e => e.getBoundingClientRect().width)"
    )
    assert min(widths) >= 300, widths
    assert page_width(page) <= 360
    out = page.locator(".cell").nth(1).locator(".cell-output")
    assert out.evaluate("e => e.getBoundingClientRect().right") <= 360
    # the toolbar wraps instead of overflowing, and stays in reach at the top while scrolling
    for sel in ("#save", "#run-all", "#history-btn", "#publish"):
        box = page.locator(sel).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 360, (sel, box)
    snap(page, "04-worksheet")
    page.click("#history-btn")
    expect(page.locator("aside.history")).to_be_visible()
    assert page_width(page) <= 360
    snap(page, "05-history")


def test_keyboard_reaches_everything(pages, dev_server):
    page = pages("keyboard")
    page.goto(dev_server + "/")
    # sign up with the keyboard alone: the user name field has the focus
    expect(page.locator("#username")).to_be_focused()
    page.keyboard.type("tara")
    page.keyboard.press("Tab")
    page.keyboard.type("correct horse battery")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.locator("#signup")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#create-ws")).to_be_visible()

    def tab_to(selector, limit=60):
        for _ in range(limit):
            page.keyboard.press("Tab")
            if page.evaluate("(s) => document.activeElement.matches(s)", selector):
                return
        raise AssertionError(f"Tab never reached {selector}")

    tab_to("#new-ws-name")
    page.keyboard.type("Keys")
    page.keyboard.press("Enter")
    expect(page.locator("#conn-state")).to_have_text("connected")
    expect(page.locator("ul.tree li").first).to_be_attached()
    tab_to("#new-worksheet")
    page.keyboard.press("Enter")
    expect(page.locator(".dialog input[name=name]")).to_be_focused()
    page.keyboard.press("Enter")
    # the new worksheet's first cell has the focus: type, run, move on
    expect(page.locator(".cell")).to_have_count(1)
    page.keyboard.type("%md")
    page.keyboard.press("Enter")
    page.keyboard.type("**Typed** with keys")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("1 + 1")
    page.keyboard.press("Shift+Enter")
    expect(page.locator(".cell").nth(1).locator(".cell-output")).to_have_text("2", timeout=60000)
    # every control of the page is in the tab order, in reading order
    page.keyboard.press("Escape")
    reached = []
    for _ in range(80):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("() => document.activeElement.id || document.activeElement.className"))
    for want in ("save", "run-all", "interrupt", "history-btn", "export-ipynb", "publish", "default-engine"):
        assert want in reached, (want, reached)
    assert any("cell-rendered" in r for r in reached), reached
    assert any("add-below" in r for r in reached), reached
    # a text cell is edited with Enter from the keyboard
    page.locator(".cell").nth(0).locator(".cell-rendered").focus()
    page.keyboard.press("Enter")
    expect(page.locator(".cell").nth(0).locator(".CodeMirror")).to_be_visible()
    # focus is visible
    page.keyboard.press("Escape")
    ring = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert ring != "none", ring
    snap(page, "01-focus")


def test_dark_theme_follows_the_system(pages, dev_server, has_sage):
    page = pages("dark", color_scheme="dark")
    page.goto(dev_server + "/")
    expect(page.locator("#username")).to_be_visible()
    dark_bg = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    assert dark_bg == "rgb(20, 24, 29)", dark_bg
    snap(page, "01-login")
    signup(page, dev_server, "uma")
    new_workspace(page, "Night")
    new_file(page, "worksheet", "night.sagews")
    cell = run_cell(page, 0, "%md\n## Dark\n\nMath: $\\sqrt{2}$", kind=None)
    run_cell(page, 1, "1/0", kind="python")
    if has_sage:
        run_cell(page, 2, "latex(x^2)", kind="sage")

    def rgb(locator, prop):
        value = locator.evaluate(f"e => getComputedStyle(e).{prop}")
        return tuple(int(v) for v in re.findall(r"\d+", value)[:3])

    def light(c):
        return sum(c) / 3 > 160

    assert not light(rgb(page.locator(".cell").nth(1), "backgroundColor"))
    assert light(rgb(cell.locator(".md h2"), "color"))
    editor = page.locator(".cell").nth(1).locator(".CodeMirror")
    assert not light(rgb(editor, "backgroundColor"))
    assert light(rgb(editor.locator(".CodeMirror-line").first, "color"))
    snap(page, "02-worksheet")
    # the same page in the light scheme is light
    page.emulate_media(color_scheme="light")
    assert light(rgb(page.locator("body"), "backgroundColor"))
    snap(page, "03-light")
