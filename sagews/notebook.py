"""Jupyter notebooks (``.ipynb``): the check the backend runs on every notebook a client saves.

The browser converts between notebooks and its cell editor (``static/js/notebook.js``: nbformat 4.5,
outputs as the worker's exec frames, everything else kept). Here nbformat, the reference
implementation of the format, says whether what was saved is a valid nbformat 4 notebook. Like
Jupyter's contents API, a notebook that fails is still written (nothing typed is lost) and the client
is told why (``write.warning``), so a broken file can be repaired in the text editor.
"""

from __future__ import annotations

import asyncio
import json
import warnings
from typing import Any

import nbformat
from nbformat.validator import ValidationError


def problem(text: str) -> str | None:
    """``None`` if ``text`` is a valid nbformat 4 notebook, else what is wrong, in words (one line)."""
    try:
        data = json.loads(text)
    except RecursionError:
        return "Not a valid notebook: JSON nested too deeply"
    except ValueError as exc:
        return f"Not a valid notebook: not JSON ({exc})"
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        return "Not a valid notebook: no list of cells"
    if data.get("nbformat") != 4:
        return f"Not a valid notebook: nbformat is {data.get('nbformat')!r}, not 4"
    with warnings.catch_warnings():
        # nbformat warns about ids it would add or repair; the verdict is what we report
        warnings.simplefilter("ignore")
        try:
            nbformat.validate(nbformat.from_dict(data), version=4)
        except ValidationError as exc:
            where = "/".join(str(p) for p in getattr(exc, "absolute_path", ()) or ())
            msg = str(exc.message)
            msg = msg if len(msg) <= 300 else msg[:300] + "…"
            return f"Not a valid nbformat 4 notebook: {msg}" + (f" (at {where})" if where else "")
        except RecursionError:
            return "Not a valid notebook: nested too deeply"
    return None


def is_notebook(path: str) -> bool:
    return path.lower().endswith(".ipynb")


async def check_write(fields: dict[str, Any]) -> str | None:
    """For a ``write`` request: the problem with a notebook written as text, else ``None`` (executor)."""
    path, text = fields.get("path"), fields.get("text")
    if not isinstance(path, str) or not is_notebook(path) or not isinstance(text, str):
        return None
    return await asyncio.get_running_loop().run_in_executor(None, problem, text)
