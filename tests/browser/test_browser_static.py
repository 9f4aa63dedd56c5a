# ruff: noqa: E501  (embedded JavaScript snippets)
"""The client served as plain files (no backend): login page, CSP-clean script loading, XSS-safe rendering,
the worksheet format, and keyboard-only cells against a stand-in exec."""

import json

from browser_helpers import shot_dir
from playwright.sync_api import expect

XSS_IMG = '<img src=x onerror="window.__xss=(window.__xss||[]).concat(1)">'
XSS_SCRIPT = "<script>window.__xss=(window.__xss||[]).concat(2)</script>"


def json_route(body, status=200):
    def handler(route):
        route.fulfill(status=status, content_type="application/json", body=json.dumps(body))

    return handler


def test_login_page_renders_without_console_errors(page, static_server):
    page.route("**/api/me", json_route({"user": None}))
    page.goto(static_server + "/")
    expect(page.locator("#username")).to_be_visible()
    expect(page.locator("#password")).to_be_visible()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    expect(page.get_by_role("button", name="Sign up")).to_be_visible()
    # every library loaded under the strict CSP
    assert page.evaluate(
        "() => [typeof SockJS, typeof CodeMirror, typeof katex, typeof SW.api, typeof SW.WorkspaceView]"
    ) == ["function", "function", "object", "object", "function"]
    page.screenshot(path=str(shot_dir() / "static-01-login.png"))
    assert page.watch.errors == []


def test_login_error_is_shown_in_words(page, static_server):
    page.route("**/api/me", json_route({"user": None}))
    page.route(
        "**/api/login", json_route({"code": "bad_login", "message": "Wrong user name or password"}, 403)
    )
    page.goto(static_server + "/")
    page.fill("#username", "alice")
    page.fill("#password", "nope")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("Wrong user name or password")


def test_xss_in_workspace_names_and_user_does_not_run(page, static_server):
    page.route("**/api/me", json_route({"user": {"name": XSS_IMG}}))
    ws = [
        {"id": "w1", "name": XSS_IMG + XSS_SCRIPT, "owner": XSS_IMG, "role": "owner", "last_activity": None}
    ]
    page.route("**/api/workspaces", json_route({"workspaces": ws}))
    page.goto(static_server + "/#/")
    expect(page.locator("a.ws-name")).to_have_text(XSS_IMG + XSS_SCRIPT)
    expect(page.locator(".topbar .me")).to_have_text(XSS_IMG)
    page.screenshot(path=str(shot_dir() / "static-02-xss-workspace-list.png"))
    assert page.evaluate("() => window.__xss") is None
    assert page.locator("a.ws-name img").count() == 0


def test_xss_in_file_names_outputs_and_published_page(page, static_server):
    page.route("**/api/me", json_route({"user": None}))
    page.goto(static_server + "/")
    expect(page.locator("#username")).to_be_visible()
    page.evaluate(
        """(payload) => {
        const box = document.getElementById('app');
        // a file tree row, as the workspace view renders it
        const fake = {dir: '.', id: 'w1', doc: null, readOnly: false};
        const ul = document.createElement('ul'); ul.className = 'tree';
        ul.appendChild(SW.WorkspaceView.prototype.entryRow.call(fake, {name: payload.img, type: 'file', size: 3}));
        box.appendChild(ul);
        // cell outputs of every kind
        const out = document.createElement('div'); out.id = 'xss-out'; box.appendChild(out);
        const v = new SW.worksheet.OutputView(out);
        v.add({type: 'stream', name: 'stdout', text: payload.img});
        v.add({type: 'display', data: {'text/html': payload.script + payload.img}});
        v.add({type: 'result', data: {'text/plain': payload.script}});
        v.add({type: 'result', data: {'text/latex': '\\\\href{javascript:alert(1)}{x} ' + payload.img}});
        v.add({type: 'exception', ename: payload.img, evalue: payload.script, traceback: payload.img});
        v.add({type: 'display', data: {'image/png': '" onerror="window.__xss=9', 'text/plain': payload.img}});
        // a published page
        const pub = document.createElement('main'); pub.id = 'xss-pub'; box.appendChild(pub);
        const text = SW.worksheet.serialize({cells: [{id: 'a', engine: 'sage', input: payload.script,
            outputs: [{type: 'display', data: {'text/html': payload.img}}]}]});
        SW.pub = SW.pub || {};
        }""",
        {"img": XSS_IMG, "script": XSS_SCRIPT},
    )
    tree_name = page.locator("ul.tree li.entry .name")
    expect(tree_name).to_contain_text(XSS_IMG)
    expect(page.locator("#xss-out iframe.out-html")).to_have_attribute("sandbox", "")
    expect(page.locator("#xss-out pre.out-error")).to_contain_text(XSS_IMG)
    page.screenshot(path=str(shot_dir() / "static-03-xss-rendering.png"))
    # the sandboxed iframe had its chance to run; give it a load event to be sure
    page.locator("#xss-out iframe.out-html").evaluate(
        "f => new Promise(r => f.contentDocument === null ? (f.onload = r, setTimeout(r, 500)) : r())"
    )
    assert page.evaluate("() => window.__xss") is None
    assert page.locator("#app img[src='x']").count() == 0


def test_published_page_renders_safely(page, static_server):
    text = (
        "#sagews worksheet v1\n#%% cell id=a1 engine=sage\nfactor(2^64-1)\n#%% output id=a1\n"
        + json.dumps({"type": "result", "data": {"text/plain": "3 * 5 * 17"}})
        + "\n"
        + json.dumps({"type": "display", "data": {"text/html": XSS_SCRIPT + XSS_IMG}})
        + "\n"
    )
    page.route(
        "**/pub/*/raw",
        json_route({"path": XSS_IMG + ".sagews", "workspace": XSS_IMG, "text": text}),
    )
    page.goto(static_server + "/pub/abc123")
    expect(page.locator("h1.doc-path")).to_have_text(XSS_IMG + ".sagews")
    expect(page.locator(".cell-output pre.out-result")).to_have_text("3 * 5 * 17")
    page.screenshot(path=str(shot_dir() / "static-04-published.png"))
    assert page.evaluate("() => window.__xss") is None
    assert page.watch.errors == []


def test_worksheet_format_round_trip(page, static_server):
    page.route("**/api/me", json_route({"user": None}))
    page.goto(static_server + "/")
    expect(page.locator("#username")).to_be_visible()
    r = page.evaluate(
        """() => {
        const ws = {cells: [
          {id: 'a', engine: 'sage', input: 'x = 1\\n#%% cell id=evil\\n\\\\#%% too\\n\\nprint(x)', outputs: [
            {type: 'stream', name: 'stdout', text: '1\\n'}, {type: 'result', data: {'text/plain': '2'}}]},
          {id: 'b', engine: 'python', input: '', outputs: []},
          {id: 'c', engine: 'sage', input: 'plot(sin)', outputs: [{type: 'display', data: {'image/png': 'iVBOR'}}]},
        ]};
        const text = SW.worksheet.serialize(ws);
        const back = SW.worksheet.parse(text);
        return {text, same: JSON.stringify(back.cells) === JSON.stringify(ws.cells), again: SW.worksheet.serialize(back) === text};
        }"""
    )
    assert r["same"], r["text"]
    assert r["again"]
    assert r["text"].startswith(
        "#sagews worksheet v1\n#%% cell id=a engine=sage\nx = 1\n\\#%% cell id=evil\n"
    )


def test_cells_keyboard_only_with_stand_in_exec(page, static_server):
    """Shift-Enter runs and moves on; Esc leaves the editor; Tab reaches the cell's buttons."""
    page.route("**/api/me", json_route({"user": None}))
    page.goto(static_server + "/")
    expect(page.locator("#username")).to_be_visible()
    page.evaluate(
        """() => {
        const box = document.getElementById('app'); box.textContent = '';
        window.__runs = [];
        const ctx = {readOnly: false, onChange() {}, onSave() {},
          exec(code, engine, onFrame) {
            window.__runs.push(code);
            return new Promise(res => setTimeout(() => {
              onFrame({type: 'stream', name: 'stdout', text: 'ran: ' + code + '\\n'});
              if (code.includes('flood')) for (let i = 0; i < 300; i++) onFrame({type: 'stream', name: 'stdout', text: 'x'.repeat(1000)});
              if (code.includes('tex')) onFrame({type: 'result', data: {'text/latex': '\\\\frac{1}{2}', 'text/plain': '1/2'}});
              res({type: 'done', status: 'ok', elapsed: 0.01});
            }, 50));
          }};
        window.__doc = new SW.editor.WorksheetDoc(box, 't.sagews', SW.worksheet.serialize({cells: [
          {id: 'a', engine: 'sage', input: '', outputs: []}]}), ctx);
        window.__doc.focus();
        }"""
    )
    page.keyboard.type("1+1")
    page.keyboard.press("Shift+Enter")
    expect(page.locator(".cell").nth(0).locator(".cell-output")).to_contain_text("ran: 1+1")
    expect(page.locator(".cell")).to_have_count(2)
    page.keyboard.type("tex")
    page.keyboard.press("Shift+Enter")
    expect(page.locator(".cell").nth(1).locator(".katex")).to_have_count(1)
    page.keyboard.type("flood")
    page.keyboard.press("Control+Enter")
    expect(page.locator(".cell").nth(2).locator(".out-truncated")).to_contain_text("Output truncated")
    # Esc leaves the editor for the cell's Run button; Tab walks the cell's buttons; Enter presses one
    page.keyboard.press("Escape")
    page.keyboard.press("Tab")
    focused = page.evaluate("() => document.activeElement.className")
    assert "add-below" in focused.split(), focused
    page.keyboard.press("Shift+Tab")
    focused = page.evaluate("() => document.activeElement.className")
    assert "run" in focused.split(), focused
    page.keyboard.press("Enter")
    expect(page.locator(".cell").nth(2).locator(".cell-status")).to_contain_text("ok")
    assert page.evaluate("() => window.__runs") == ["1+1", "tex", "flood", "flood"]
    assert "x = 1" not in page.evaluate("() => window.__doc.getText()")
    page.screenshot(path=str(shot_dir() / "static-05-keyboard-cells.png"))
    assert page.watch.errors == []
