"""The whole journey in Chromium against `sagews dev` (real backend, real worker on 127.0.0.1):
sign up, worksheet, Sage `factor` and a plot (Python where the worker has no Sage), save, reload,
history, restore, share read-only, presence, publish and unpublish."""

from browser_helpers import new_file, new_workspace, run_cell, signup, snap
from playwright.sync_api import expect

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


def test_whole_journey(pages, dev_server, has_sage):
    base = dev_server
    alice, bob, anon = pages("journey"), pages("journey"), pages("journey")

    # sign up both accounts
    signup(bob, base, "bob")
    signup(alice, base, "alice")
    snap(alice, "01-signed-up")

    # create a workspace and a worksheet
    new_workspace(alice, "Journey")
    new_file(alice, "worksheet", "demo.sagews")
    expect(alice.locator(".cell")).to_have_count(1)
    snap(alice, "02-new-worksheet")

    # factor(2^64-1): Sage when the worker has it, Python otherwise
    if has_sage:
        cell = run_cell(alice, 0, "factor(2^64-1)")
        expect(cell.locator(".cell-output")).to_contain_text(FACTORS)
        plot = run_cell(alice, 1, "plot(sin(x), 0, 2*pi)")
    else:
        cell = run_cell(alice, 0, PY_FACTOR, kind="python")
        expect(cell.locator(".cell-output")).to_contain_text("[3, 5, 17, 257, 641, 65537, 6700417]")
        plot = run_cell(alice, 1, PY_PLOT, kind="python")
    snap(alice, "03-factor")
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

    # publish: the buttons follow the file's state; read it logged out
    expect(alice.locator("#unpublish")).to_have_count(0)
    alice.click("#publish")
    link = alice.locator("#pub-url")
    expect(link).to_be_visible()
    expect(alice.locator("#publish")).to_have_count(0)
    expect(alice.locator("#unpublish")).to_be_visible()
    url = link.get_attribute("href")
    anon.goto(base + url)
    expect(anon.locator(".cell-output").first).to_contain_text("65537")
    expect(anon.locator("img.out-img")).to_be_visible()
    snap(anon, "10-published")
    alice.reload()  # the state is shown again for a published file
    expect(alice.locator("#pub-url")).to_have_attribute("href", url)
    expect(alice.locator("#publish")).to_have_count(0)
    alice.click("#unpublish")
    expect(alice.locator(".flash.info", has_text="Unpublished").first).to_be_visible()
    expect(alice.locator("#publish")).to_be_visible()
    expect(alice.locator("#pub-url")).to_have_count(0)
    anon.watch.allow("status of 404")  # the page's data request: unpublished
    anon.reload()
    expect(anon.locator("#pub")).to_contain_text("not published")
