"""sagews/notebook.py: the backend's nbformat check of saved notebooks (the browser's round trip is
tests/browser/test_browser_notebook.py)."""

import json

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from sagews import notebook


def jupyter(**kw) -> str:
    nb = new_notebook(**kw)
    nb.cells = [
        new_markdown_cell("# t"),
        new_code_cell("1+1", execution_count=1, outputs=[new_output("execute_result", {"text/plain": "2"})]),
    ]
    return nbformat.writes(nb)


def test_a_valid_notebook_passes():
    assert notebook.problem(jupyter()) is None
    # nbformat 4.4 (no cell ids) is valid too
    d = json.loads(jupyter())
    d["nbformat_minor"] = 4
    for c in d["cells"]:
        del c["id"]
    assert notebook.problem(json.dumps(d)) is None


def test_problems_are_said_in_one_line():
    assert "not JSON" in notebook.problem("{not json")
    assert "no list of cells" in notebook.problem("[]")
    assert "nbformat is 3, not 4" in notebook.problem('{"cells": [], "nbformat": 3}')
    d = json.loads(jupyter())
    del d["cells"][1]["outputs"]  # a code cell must have outputs
    msg = notebook.problem(json.dumps(d))
    assert msg.startswith("Not a valid nbformat 4 notebook") and "\n" not in msg
    d = json.loads(jupyter())
    d["cells"][0]["cell_type"] = "wat"
    assert notebook.problem(json.dumps(d)).startswith("Not a valid nbformat 4 notebook")


def test_hostile_input_gets_an_answer_not_a_crash():
    deep = '{"cells": [], "nbformat": 4, "metadata": ' + "[" * 100000 + "]" * 100000 + "}"
    assert notebook.problem(deep).startswith("Not a valid notebook")
    huge = json.loads(jupyter())
    huge["cells"][0]["source"] = "x" * 5_000_000
    assert notebook.problem(json.dumps(huge)) is None


async def test_check_write_looks_at_notebooks_written_as_text_only():
    bad = '{"cells": [], "nbformat": 3}'
    r = [
        await notebook.check_write({"path": "a/b.ipynb", "text": bad}),
        await notebook.check_write({"path": "a/b.IPYNB", "text": bad}),
        await notebook.check_write({"path": "a/b.txt", "text": bad}),
        await notebook.check_write({"path": "a/b.ipynb", "b64": "e30="}),
        await notebook.check_write({"path": "a/b.ipynb", "text": jupyter()}),
    ]
    assert r[0] and r[1] and r[2:] == [None, None, None]
