"""Cells against the real `sagews dev`: Markdown and HTML text cells (`%md`, the cell-type switch,
double-click / Enter to edit, KaTeX math, sanitized HTML, saved as `type=` cells and rendered on the
published page), and new cells taking the worksheet's default engine."""

import json
import re

from browser_helpers import new_file, new_workspace, run_cell, set_cell, signup, snap
from playwright.sync_api import expect

MD = (
    "# Results\n\nEuler: $e^{i\\pi} + 1 = 0$, and $a_1 * b_2$ stays TeX.\n\n"
    "$$\\int_0^1 x^2\\,dx = \\frac{1}{3}$$\n\n"
    "| n | n² |\n|---|---|\n| 2 | 4 |\n\n"
    "[docs](https://example.org/docs) [bad](javascript:parent.__xss=1)\n\n"
    '<img src=x onerror="parent.__xss=2"> <script>parent.__xss=3</script>'
    '<b onclick="parent.__xss=4">bold</b> <span style="position:fixed;inset:0">overlay</span>\n\n'
    "![remote](https://example.org/tracker.png)"
)


def read_file(page, path):
    """The file as the workspace has it, read over the page's own live connection (the real backend)."""
    return page.evaluate("async (p) => (await SW.app.state.ws.session.read(p)).text", path)


def test_markdown_and_html_cells(pages, dev_server):
    page = pages("markdown")
    anon = pages("markdown")
    page.watch.allow_hostile_html()
    anon.watch.allow_hostile_html()
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    signup(page, dev_server, "mona")
    new_workspace(page, "Text cells")
    new_file(page, "worksheet", "notes.sagews")

    # `%md` as the first line (Sage's way) turns a code cell into Markdown when run
    cell = set_cell(page, 0, "%md\n" + MD)
    page.keyboard.press("Shift+Enter")
    text = page.locator(".cell").nth(0)
    expect(text).to_have_class(re.compile(r"\btext-cell\b"))
    md = text.locator(".cell-rendered .md")
    expect(md.locator("h1")).to_have_text("Results")
    expect(md.locator(".katex")).to_have_count(3)  # two inline, one display
    expect(md.locator(".katex-display")).to_have_count(1)
    expect(md.locator("table td").nth(1)).to_have_text("4")
    expect(md.locator("b")).to_have_text("bold")
    expect(text.locator("select.engine")).to_have_value("markdown")
    # sanitized: no script, no handlers, no styles, no javascript: link, no remote image
    assert md.locator("script, [onclick], [onerror]").count() == 0
    assert md.locator("span", has_text="overlay").evaluate("e => e.getAttribute('style')") is None
    assert md.locator("a[href^='javascript']").count() == 0
    expect(md.locator("a", has_text="docs")).to_have_attribute("rel", "noopener noreferrer nofollow")
    expect(md.locator("img")).to_have_count(0)
    expect(md).to_contain_text("[image: remote]")
    snap(page, "01-rendered")

    # the next cell is a code cell again; an HTML cell through the cell-type switch
    cell = page.locator(".cell").nth(1)
    cell.locator("select.engine").select_option("html")
    cell.locator(".CodeMirror").click()
    page.keyboard.type("<h2>Plain <i>HTML</i></h2><p onmouseover='parent.__xss=5'>para</p>")
    page.keyboard.press("Shift+Enter")
    expect(cell.locator(".cell-rendered h2")).to_have_text("Plain HTML")
    expect(cell.locator(".cell-rendered [onmouseover]")).to_have_count(0)

    # edit again: double-click, or Enter on the focused rendered cell; Shift-Enter renders it again
    text.locator(".cell-rendered").dblclick()
    expect(text.locator(".CodeMirror")).to_be_visible()
    expect(text.locator(".cell-rendered")).to_be_hidden()
    page.keyboard.press("Control+End")
    page.keyboard.type("\n\nAdded *later*.")
    page.keyboard.press("Shift+Enter")
    expect(text.locator(".cell-rendered")).to_contain_text("Added later.")
    cell.locator(".cell-rendered").focus()
    page.keyboard.press("Enter")
    expect(cell.locator(".CodeMirror")).to_be_visible()
    page.keyboard.press("Control+Enter")
    expect(cell.locator(".cell-rendered h2")).to_be_visible()

    # saved as text cells of the worksheet format; shown rendered after a reload
    page.keyboard.press("Control+S")
    expect(page.locator("#save-state")).to_have_attribute("data-state", "saved")
    saved = read_file(page, "notes.sagews")
    cells = re.findall(r"^#%% cell id=\w+ (.*)$", saved, re.M)
    assert cells[:2] == ["type=markdown", "type=html"], saved
    assert "%md" not in saved and "Added *later*." in saved
    page.reload()
    expect(page.locator(".cell").nth(0).locator(".cell-rendered .katex")).to_have_count(3)
    expect(page.locator(".cell").nth(1).locator(".cell-rendered h2")).to_have_text("Plain HTML")

    # the published page renders them the same way
    page.click("#publish")
    url = page.locator("#pub-url").get_attribute("href")
    anon.goto(dev_server + url)
    expect(anon.locator(".md h1")).to_have_text("Results")
    expect(anon.locator(".md .katex-display")).to_have_count(1)
    expect(anon.locator(".md h2")).to_have_text("Plain HTML")
    snap(anon, "02-published")
    assert page.evaluate("() => window.__xss") is None
    assert anon.evaluate("() => window.__xss") is None
    assert not [u for u in requests if "example.org" in u], requests


def test_new_cells_take_the_worksheet_default_engine(pages, dev_server, has_sage):
    page = pages("engine")
    signup(page, dev_server, "nina")
    new_workspace(page, "Engines")
    new_file(page, "worksheet", "mixed.sagews")
    expect(page.locator("#default-engine")).to_have_value("sage")
    # a Python cell, then Shift-Enter: the new cell is Sage (the worksheet's default), not Python
    c0 = run_cell(page, 0, "import sys; sys.version_info[0]", kind="python")
    expect(c0.locator(".cell-output")).to_have_text("3")
    c1 = page.locator(".cell").nth(1)
    expect(c1.locator("select.engine")).to_have_value("sage")
    if has_sage:
        run_cell(page, 1, "factor(2^64-1)")
        expect(c1.locator(".cell-output")).to_contain_text("6700417")
    # the default is the worksheet's, saved in its header
    page.locator("#default-engine").select_option("python")
    page.locator(".cell").nth(1).locator("button.add-below").click()
    expect(page.locator(".cell").nth(2).locator("select.engine")).to_have_value("python")
    c2 = run_cell(page, 2, "2**10")
    expect(c2.locator(".cell-output")).to_have_text("1024")
    page.keyboard.press("Control+S")
    expect(page.locator("#save-state")).to_have_attribute("data-state", "saved")
    saved = read_file(page, "mixed.sagews")
    assert saved.startswith("#sagews worksheet v1 engine=python\n"), saved[:80]
    assert re.findall(r"engine=(\w+)", saved)[1:4] == ["python", "sage", "python"], saved
    page.reload()
    expect(page.locator("#default-engine")).to_have_value("python")
    page.locator(".cell").last.locator("button.add-below").click()
    expect(page.locator(".cell").last.locator("select.engine")).to_have_value("python")
    snap(page, "01-default-engine")
    out = json.loads(saved.split("#%% output id=")[1].split("\n", 1)[1].splitlines()[0])
    assert out == {"type": "result", "data": {"text/plain": "3"}}


def test_tracebacks_and_help(pages, dev_server, has_sage):
    """Tracebacks show the user's lines once, without server paths; `name?` asks the engine for help."""
    page = pages("traceback")
    signup(page, dev_server, "omar")
    new_workspace(page, "Errors and help")
    new_file(page, "worksheet", "tb.sagews")
    engine = "sage" if has_sage else "python"
    run_cell(page, 0, "def f(n):\n    return n / 0", kind=engine)
    cell = run_cell(page, 1, "f(3)")
    err = cell.locator(".out-error")
    expect(err).to_contain_text("    return n / 0")
    expect(err).to_contain_text("    f(3)")
    text = err.text_content()
    last_lines = [line for line in text.splitlines() if line.startswith("ZeroDivisionError:")]
    assert len(last_lines) == 1 and "Integer(" not in text and "/site-packages/" not in text, text
    doc = run_cell(page, 2, "factor?" if has_sage else "len?")
    want = "Signature: factor(" if has_sage else "Return the number of items"
    expect(doc.locator(".cell-output")).to_contain_text(want)
    snap(page, "01-traceback-and-help")
