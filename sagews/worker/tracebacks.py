"""Tracebacks of user code as its user reads them (inside the engine process).

* Each execution is compiled under its own file name, ``<cell N>``, whose lines (the cell as the user
  typed it, before Sage's preparser) are registered with ``linecache``: a traceback shows the user's own
  line under each of their frames, also for a function defined in an earlier cell.
* The worker's own frames (the engine's exec machinery) are dropped; paths of library frames are
  shortened to what identifies them (``sage/rings/integer.pyx``, ``python3.11/json/decoder.py``)
  instead of the server's install layout.
* The last line (``ZeroDivisionError: division by zero``) appears once: the client shows the traceback
  as sent, and ``evalue`` is ``str(exception)`` (empty for a bare ``AssertionError``), as in Jupyter.
"""

from __future__ import annotations

import contextlib
import linecache
import os
import site
import sysconfig
import traceback
from typing import Any

KEEP_CELLS = 500  # sources kept for tracebacks of functions defined in earlier cells
MAX_TRACEBACK = 50_000


def _prefixes() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    paths: list[str] = []
    with contextlib.suppress(AttributeError):  # some virtualenvs
        paths += site.getsitepackages()
    paths += [sysconfig.get_paths().get(k, "") for k in ("purelib", "platlib")]
    for p in paths:
        if p:
            out.append((os.path.realpath(p) + os.sep, ""))
            out.append((p.rstrip(os.sep) + os.sep, ""))
    std = sysconfig.get_paths().get("stdlib", "")
    if std:
        name = os.path.basename(std.rstrip(os.sep))  # "python3.11"
        out += [(os.path.realpath(std) + os.sep, name + "/"), (std.rstrip(os.sep) + os.sep, name + "/")]
    return sorted(set(out), key=lambda x: -len(x[0]))


PREFIXES = _prefixes()


def short_path(path: str) -> str:
    """A library file by its package path; the workspace's own files relative to it; else unchanged."""
    for prefix, repl in PREFIXES:
        if path.startswith(prefix):
            return repl + path[len(prefix) :]
    home = os.environ.get("HOME")
    if home and path.startswith(home.rstrip(os.sep) + os.sep):
        return "~/" + path[len(home.rstrip(os.sep)) + 1 :]
    return path


class Cells:
    """File names for executions, with their source lines in linecache."""

    def __init__(self) -> None:
        self.count = 0
        self.names: list[str] = []

    def register(self, source: str) -> str:
        self.count += 1
        name = f"<cell {self.count}>"
        lines = source.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        linecache.cache[name] = (len(source), None, lines, name)
        self.names.append(name)
        while len(self.names) > KEEP_CELLS:
            linecache.cache.pop(self.names.pop(0), None)
        return name


def fix_syntax_error(value: BaseException, filename: str, source: str) -> None:
    """A SyntaxError in a (Sage-preparsed) cell shows the line as the user typed it."""
    if not isinstance(value, SyntaxError) or value.filename != filename or not value.lineno:
        return
    lines = source.splitlines()
    if not 0 < value.lineno <= len(lines) or value.text is None:
        return
    if value.text.rstrip("\n") != lines[value.lineno - 1]:
        value.text = lines[value.lineno - 1] + "\n"
        value.offset = None  # a caret would point into the preparsed text
        value.end_offset = None


def format_exception(etype: Any, value: BaseException, tb: Any, skip_file: str) -> tuple[str, str, str]:
    """(ename, evalue, traceback) for the worker's ``exception`` frame."""
    while tb is not None and tb.tb_frame.f_code.co_filename == skip_file:
        tb = tb.tb_next
    out = []
    for chunk in traceback.format_exception(etype, value, tb):
        if chunk.startswith('  File "') and not chunk.startswith('  File "<'):
            path = chunk[8 : chunk.index('"', 8)]
            out.append('  File "' + short_path(path) + chunk[8 + len(path) :])
        else:
            out.append(chunk)
    text = "".join(out)
    if len(text) > MAX_TRACEBACK:
        text = "[traceback cut]\n" + text[-MAX_TRACEBACK:]
    try:
        evalue = str(value)
    except Exception as exc:
        evalue = f"<str() failed: {type(exc).__name__}>"
    return getattr(etype, "__name__", str(etype)), evalue[:10_000], text
