"""Publishing a folder, or the whole workspace, as a read-only site under /pub/ (real `sagews dev`):
the index page, links between the site's files, its images, worksheets and notebooks rendered, files
outside the folder not reachable, updates seen at once, unpublishing."""

import base64

from browser_helpers import new_workspace, signup, snap
from playwright.sync_api import expect
from test_browser_notebook import PNG, jupyter_notebook

INDEX = (
    "# Course notes\n\nSee [the worksheet](week1.sagews), [a notebook](nb/intro.ipynb).\n\n"
    "![a plot](plot.png)\n"
)
WEEK1 = (
    "#sagews worksheet v1\n#%% cell id=aa type=markdown\n## Week 1 with $x^2$\n"
    "#%% cell id=bb engine=sage\nfactor(12)\n#%% output id=bb\n"
    '{"type": "result", "data": {"text/plain": "2^2 * 3"}}\n'
)


def put(page, path, text=None, b64=None):
    data = {"text": text} if text is not None else {"b64": b64}
    page.evaluate("async ([p, d]) => await SW.app.state.ws.session.write(p, d)", [path, data])


def test_publish_a_folder_and_the_workspace_as_sites(pages, dev_server):
    page, anon = pages("site"), pages("site")
    anon.watch.allow("status of 404")  # pages outside the site, and after unpublishing
    signup(page, dev_server, "rosa")
    new_workspace(page, "Course")
    put(page, "course/index.md", INDEX)
    put(page, "course/week1.sagews", WEEK1)
    put(page, "course/nb/intro.ipynb", jupyter_notebook())
    put(page, "course/plot.png", b64=PNG)
    put(page, "course/data.bin", b64=base64.b64encode(b"\xff\xfe\0\1").decode())
    put(page, "private.txt", "not in the site")
    page.reload()
    page.locator("ul.tree .name", has_text="course").click()
    expect(page.locator(".crumbs")).to_contain_text("course")

    # publish the folder: its link appears where the button was
    page.click("#publish-site")
    expect(page.locator(".flash.info", has_text="as a site")).to_be_visible()
    link = page.locator("#site-url")
    expect(link).to_be_visible()
    expect(page.locator("#publish-site")).to_have_count(0)
    url = link.get_attribute("href")
    snap(page, "01-published-folder")

    # the site, logged out: the file list and the index page, its image fetched as data
    anon.goto(dev_server + url)
    expect(anon.locator("h1.doc-path").first).to_have_text("course")
    files = anon.locator("ul.site-files")
    expect(files.locator("a", has_text="week1.sagews")).to_be_visible()
    expect(files.locator("a", has_text="nb/")).to_be_visible()
    expect(anon.locator(".site-page h1")).to_have_text("Course notes")
    img = anon.locator(".site-page img")
    expect(img).to_have_attribute("src", "data:image/png;base64," + PNG)
    expect(anon.locator(".hint", has_text="not published (binary")).to_be_visible()  # data.bin
    snap(anon, "02-site-index")

    # links between its files stay in the site: a worksheet and a notebook, rendered
    anon.locator(".site-page a", has_text="the worksheet").click()
    expect(anon).to_have_url(f"{dev_server}{url}?path=week1.sagews")
    expect(anon.locator(".md h2")).to_contain_text("Week 1")
    expect(anon.locator(".md .katex")).to_have_count(1)
    expect(anon.locator(".cell-output")).to_have_text("2^2 * 3")
    snap(anon, "03-site-worksheet")
    anon.go_back()
    anon.locator(".site-page a", has_text="a notebook").click()
    expect(anon.locator(".md h1")).to_have_text("A notebook")
    expect(anon.locator("img.out-img")).to_be_visible()
    anon.locator(".site-crumbs a").first.click()
    expect(anon.locator(".site-page h1")).to_have_text("Course notes")

    # nothing outside the folder is reachable through it
    r = anon.evaluate(
        "async (u) => (await fetch(u + '/raw?path=' + encodeURIComponent('../private.txt'))).status",
        url,
    )
    assert r == 404
    r = anon.evaluate("async (u) => (await fetch(u + '/raw?path=private.txt')).status", url)
    assert r == 404

    # an update publishes the last saved version: an edit shows up after "Update"
    put(page, "course/index.md", INDEX.replace("Course notes", "Course notes, v2"))
    with page.expect_response("**/publish"):
        page.click("#republish-site")
    expect(page.locator(".flash.info", has_text="Updated the site")).to_be_visible()
    anon.reload()
    expect(anon.locator(".site-page h1")).to_have_text("Course notes, v2")

    # the whole workspace as a site too; then unpublish the folder
    page.locator(".crumbs button", has_text="/").first.click()
    page.click("#publish-site")
    expect(page.locator("#site-url")).to_be_visible()
    whole = page.locator("#site-url").get_attribute("href")
    assert whole != url
    anon.goto(dev_server + whole)
    expect(anon.locator("ul.site-files a", has_text="private.txt")).to_be_visible()
    expect(anon.locator("ul.site-files a", has_text="course/")).to_be_visible()
    anon.locator("ul.site-files a", has_text="course/").click()
    expect(anon.locator(".site-page h1")).to_have_text("Course notes, v2")
    page.locator("ul.tree .name", has_text="course").click()
    page.click("#unpublish-site")
    expect(page.locator("#publish-site")).to_be_visible()
    anon.goto(dev_server + url)
    expect(anon.locator("#pub")).to_contain_text("not published")
