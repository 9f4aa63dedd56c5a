"""Jupyter notebooks against the real `sagews dev`: a notebook written by nbformat is uploaded, opened
(outputs rendered: text, PNG, LaTeX, HTML, errors; Markdown with math), kept byte for byte when nothing
changed, run with the Python and the Sage kernel, saved back and validated by nbformat; a .sagews
worksheet exported as .ipynb; a broken .ipynb opens as text and its saves are flagged by the backend."""

import base64
import json
import struct
import zlib

import nbformat
from browser_helpers import new_file, new_workspace, signup, snap, wait_done
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output, new_raw_cell
from playwright.sync_api import expect


def png_b64(w=24, h=12) -> str:
    """A small real PNG (a red-blue gradient), as nbformat stores it: base64 text."""
    raw = b"".join(b"\0" + b"".join(bytes([x * 10 % 256, 40, 200]) for x in range(w)) for _ in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
    png += chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


PNG = png_b64()


def jupyter_notebook(kernel="python3") -> str:
    """What Jupyter would have saved: every output type, Markdown with math, a raw cell, ANSI colours."""
    ks = {"python3": ("Python 3", "python"), "sagemath": ("SageMath 10.8", "sage")}[kernel]
    nb = new_notebook(
        metadata={
            "kernelspec": {"name": kernel, "display_name": ks[0], "language": ks[1]},
            "language_info": {"name": ks[1]},
            "custom": {"kept": [1, 2, 3]},
        }
    )
    nb.cells = [
        new_markdown_cell(
            "# A notebook\n\nEuler: $e^{i\\pi} + 1 = 0$\n\n$$\\sum_{k=1}^n k = \\frac{n(n+1)}{2}$$"
        ),
        new_code_cell(
            "print('hello')\nprint('world')",
            execution_count=1,
            outputs=[new_output("stream", name="stdout", text="hello\nworld\n")],
        ),
        new_code_cell(
            "half",
            execution_count=2,
            outputs=[
                new_output(
                    "execute_result",
                    data={"text/plain": "1/2", "text/latex": "$\\frac{1}{2}$"},
                    execution_count=2,
                )
            ],
        ),
        new_code_cell(
            "plot",
            execution_count=3,
            outputs=[
                new_output(
                    "display_data",
                    data={"image/png": PNG, "text/plain": "<Figure size 640x480>"},
                    metadata={"image/png": {"width": 240}},
                )
            ],
        ),
        new_code_cell(
            "table",
            execution_count=4,
            outputs=[new_output("display_data", data={"text/html": "<table><tr><td>cell</td></tr></table>"})],
        ),
        new_code_cell(
            "1/0",
            execution_count=5,
            outputs=[
                new_output(
                    "error",
                    ename="ZeroDivisionError",
                    evalue="division by zero",
                    traceback=["\x1b[0;31mZeroDivisionError\x1b[0m: division by zero"],
                )
            ],
        ),
        new_raw_cell("raw .. text"),
        new_code_cell("6 * 7"),
    ]
    return nbformat.writes(nb) + "\n"


def upload(page, name: str, text: str) -> None:
    page.locator("input[type=file]").set_input_files(
        {"name": name, "mimeType": "application/x-ipynb+json", "buffer": text.encode()}
    )
    expect(page.locator("ul.tree .name", has_text=name)).to_be_visible()


def read_file(page, path):
    return page.evaluate("async (p) => (await SW.app.state.ws.session.read(p)).text", path)


def open_file(page, name):
    page.locator("ul.tree .name", has_text=name).click()
    expect(page.locator(".doc-path")).to_have_text(name)


def test_notebook_round_trip(pages, dev_server, has_sage):
    page = pages("notebook")
    signup(page, dev_server, "olga")
    new_workspace(page, "Notebooks")
    original = jupyter_notebook()
    upload(page, "jupyter.ipynb", original)
    open_file(page, "jupyter.ipynb")

    # every output as Jupyter saved it
    cells = page.locator(".cell")
    expect(cells).to_have_count(8)
    expect(page.locator("#default-engine")).to_have_value("python")
    expect(cells.nth(0).locator(".cell-rendered h1")).to_have_text("A notebook")
    expect(cells.nth(0).locator(".katex")).to_have_count(2)
    expect(cells.nth(1).locator(".cell-output")).to_have_text("hello\nworld\n")
    expect(cells.nth(2).locator(".cell-output .katex")).to_have_count(1)
    img = cells.nth(3).locator("img.out-img")
    expect(img).to_have_attribute("src", "data:image/png;base64," + PNG)
    assert img.evaluate("i => i.complete && i.naturalWidth") == 24
    expect(cells.nth(4).frame_locator("iframe.out-html").locator("td")).to_have_text("cell")
    expect(cells.nth(5).locator(".out-error")).to_have_text("ZeroDivisionError: division by zero")
    expect(cells.nth(6).locator(".raw-cell")).to_have_text("raw .. text")
    expect(cells.nth(6).locator("select.engine")).to_have_value("raw")
    snap(page, "01-opened")
    # nothing changed: the editor's text is the file, byte for byte
    assert page.evaluate("() => SW.app.state.ws.doc.getText()") == original

    # run a cell with the notebook's kernel (Python), save, validate with nbformat
    cells.nth(7).locator(".CodeMirror").click()
    page.keyboard.press("Control+Enter")
    wait_done(cells.nth(7))
    expect(cells.nth(7).locator(".cell-output")).to_have_text("42")
    page.keyboard.press("Control+S")
    expect(page.locator("#save-state")).to_have_attribute("data-state", "saved")
    saved = read_file(page, "jupyter.ipynb")
    nb = nbformat.reads(saved, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4 and nb.nbformat_minor >= 5
    assert nb.metadata["custom"] == {"kept": [1, 2, 3]}
    before = nbformat.reads(original, as_version=4)
    for i in range(7):  # untouched cells, outputs included, are as they were
        assert nb.cells[i] == before.cells[i], i
    last = nb.cells[7]
    assert last.execution_count == 6  # after the notebook's highest (5)
    assert last.outputs == [
        {"output_type": "execute_result", "data": {"text/plain": "42"}, "metadata": {}, "execution_count": 6}
    ]

    # the kernel switch: Sage (when the worker has it) runs Sage syntax; saved as the kernelspec
    if has_sage:
        page.locator("#default-engine").select_option("sage")
        cells.nth(7).locator(".CodeMirror").click()
        page.keyboard.press("Control+A")
        page.keyboard.type("factor(2^64-1)")
        page.keyboard.press("Control+Enter")
        wait_done(cells.nth(7))
        expect(cells.nth(7).locator(".cell-output")).to_contain_text("6700417")
        page.keyboard.press("Control+S")
        expect(page.locator("#save-state")).to_have_attribute("data-state", "saved")
        nb = nbformat.reads(read_file(page, "jupyter.ipynb"), as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == "sagemath"
        assert "6700417" in nb.cells[7].outputs[0]["data"]["text/plain"]
    snap(page, "02-ran-and-saved")

    # reopened from the workspace: the same cells and outputs
    page.reload()
    expect(page.locator(".cell").nth(3).locator("img.out-img")).to_be_visible()
    expect(page.locator(".cell").nth(7).locator(".cell-output")).not_to_be_empty()


def test_export_worksheet_as_notebook(pages, dev_server):
    page = pages("export")
    signup(page, dev_server, "pia")
    new_workspace(page, "Export")
    new_file(page, "worksheet", "work.sagews")
    page.locator("#default-engine").select_option("python")
    cell = page.locator(".cell").first
    cell.locator("select.engine").select_option("python")
    cell.locator(".CodeMirror").click()
    page.keyboard.type("%md")
    page.keyboard.press("Enter")
    page.keyboard.type("## Notes with $x^2$")
    page.keyboard.press("Shift+Enter")
    for code in ["print('out')", "1/0", "from math import pi; round(pi, 3)"]:
        page.keyboard.type(code)
        page.keyboard.press("Shift+Enter")
        wait_done(page.locator(".cell").nth(page.locator(".cell").count() - 2))
    page.click("#export-ipynb")
    expect(page.locator(".flash.info", has_text="Exported to work.ipynb")).to_be_visible()
    expect(page.locator("ul.tree .name", has_text="work.ipynb")).to_be_visible()
    nb = nbformat.reads(read_file(page, "work.ipynb"), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    kinds = [c.cell_type for c in nb.cells]
    assert kinds[:4] == ["markdown", "code", "code", "code"], kinds
    assert nb.cells[0].source == "## Notes with $x^2$"
    assert nb.cells[1].outputs == [{"output_type": "stream", "name": "stdout", "text": "out\n"}]
    assert nb.cells[2].outputs[0]["output_type"] == "error"
    assert nb.cells[2].outputs[0]["ename"] == "ZeroDivisionError"
    assert nb.cells[3].outputs[0]["data"] == {"text/plain": "3.142"}
    # and it opens as a notebook here
    open_file(page, "work.ipynb")
    expect(page.locator(".cell").nth(0).locator(".cell-rendered h2")).to_contain_text("Notes with")
    expect(page.locator(".cell").nth(3).locator(".cell-output")).to_have_text("3.142")
    snap(page, "01-exported-notebook")


def test_broken_notebook_opens_as_text_and_saves_are_flagged(pages, dev_server):
    page = pages("bad-notebook")
    signup(page, dev_server, "quinn")
    new_workspace(page, "Broken")
    upload(page, "bad.ipynb", '{"cells": [], "nbformat": 3}')
    open_file(page, "bad.ipynb")
    expect(page.locator(".doc-problem")).to_contain_text("Only nbformat 4 notebooks")
    expect(page.locator(".text-editor")).to_be_visible()
    # an edit is saved (nothing typed is lost) and the backend's nbformat check says what is wrong
    page.locator(".text-editor").click()
    page.keyboard.press("Control+End")
    page.keyboard.type(" ")
    expect(page.locator(".flash.warning")).to_contain_text("nbformat is 3, not 4")
    expect(page.locator("#save-state")).to_have_attribute("data-state", "saved")
    # repaired in the text editor: no warning any more, and it opens as a notebook
    fixed = json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    page.locator(".text-editor").evaluate("(e, t) => e.CodeMirror.setValue(t)", fixed)
    page.locator(".text-editor").click()
    page.keyboard.press("Control+End")
    page.keyboard.type("\n")
    expect(page.locator("#save-state")).to_have_attribute("data-state", "saved")
    page.locator(".flash.warning").get_by_role("button", name="Dismiss").click()
    page.reload()
    expect(page.locator(".cell")).to_have_count(1)  # an empty notebook shows one empty cell to type in
    expect(page.locator("#default-engine")).to_be_visible()
    expect(page.locator(".flash.warning")).to_have_count(0)
