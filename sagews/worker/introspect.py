"""Completion and help, computed inside a workspace's engine process on its own namespace.

Runs as the workspace user with its limits (it is user code's process): a completion only looks names
up and, for ``a.b.<Tab>``, evaluates the dotted name before the dot (attribute access, never a call),
like the standard library's ``rlcompleter`` and IPython with ``greedy`` off.

* ``complete(ns, code, cursor)`` -> (matches, start, end): ``start``/``end`` are the offsets (code
  points) of the text the chosen match replaces.
* ``help_request(code)`` recognises ``name?`` and ``name??`` (IPython's syntax, which Sage users know);
  ``help_text(ns, name, source, sage)`` is what it shows: signature and docstring, or the source.
"""

from __future__ import annotations

import builtins
import contextlib
import inspect
import keyword
import re
from typing import Any

MAX_MATCHES = 500
TOKEN = re.compile(r"((?:[A-Za-z_]\w*\.)*)(\w*)$")  # "math.sq" -> ("math.", "sq")
HELP = re.compile(r"^\s*([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*)\s*(\?\??)\s*$")
MAX_HELP = 60_000


def _attr_names(obj: Any) -> list[str]:
    names: set[str] = set()
    with contextlib.suppress(Exception):  # a broken __dir__ completes nothing
        names.update(dir(obj))
    return sorted(n for n in names if isinstance(n, str))


def _lookup(ns: dict[str, Any], dotted: str) -> Any:
    """The object a dotted name refers to (attribute access only); raises LookupError if none."""
    parts = dotted.split(".")
    if parts[0] in ns:
        obj = ns[parts[0]]
    elif hasattr(builtins, parts[0]):
        obj = getattr(builtins, parts[0])
    else:
        raise LookupError(dotted)
    for p in parts[1:]:
        try:
            obj = getattr(obj, p)
        except Exception:
            raise LookupError(dotted) from None
    return obj


def complete(ns: dict[str, Any], code: str, cursor: int) -> tuple[list[str], int, int]:
    """Names for the identifier (or ``obj.attr``) that ends at ``cursor`` in ``code``."""
    cursor = max(0, min(cursor, len(code)))
    before = code[code.rfind("\n", 0, cursor) + 1 : cursor]
    m = TOKEN.search(before)
    head, word = (m.group(1), m.group(2)) if m else ("", "")
    start = cursor - len(word)
    lead = before[: len(before) - len(head) - len(word)]
    if (not head and not word) or lead.endswith(".") or word[:1].isdigit():
        return [], start, cursor  # nothing to complete, or an attribute of an expression (not evaluated)
    if head:
        try:
            obj = _lookup(ns, head[:-1])
        except LookupError:
            return [], start, cursor
        pool = _attr_names(obj)
    else:
        pool = sorted({n for n in (*ns, *dir(builtins), *keyword.kwlist) if isinstance(n, str)})
    found = [n for n in pool if n.startswith(word) and (word.startswith("_") or not n.startswith("_"))]
    return found[:MAX_MATCHES], start, cursor


def help_request(code: str) -> tuple[str, bool] | None:
    """``("name", source?)`` when the cell is only ``name?`` or ``name??``, else None."""
    m = HELP.match(code)
    if m is None:
        return None
    return m.group(1), m.group(2) == "??"


def help_text(ns: dict[str, Any], name: str, source: bool, sage: bool) -> str:
    """What ``name?`` shows (signature, type, docstring) or ``name??`` (the source, when there is one)."""
    try:
        obj = _lookup(ns, name)
    except LookupError:
        return f"Object `{name}` not found."
    lines = [f"Type:      {type(obj).__name__}"]
    sig = _signature(obj, sage)
    if sig:
        lines.append(f"Signature: {name}{sig}")
    where = _where(obj)
    if where:
        lines.append(f"File:      {where}")
    if source:
        src = _source(obj, sage)
        lines.append("Source:\n" + src if src else "Source:    (not available: built in or compiled)")
    else:
        doc = _doc(obj, sage)
        lines.append("Docstring:\n" + doc if doc else "Docstring: (none)")
    text = "\n".join(lines)
    return text if len(text) <= MAX_HELP else text[:MAX_HELP] + "\n[help cut]"


def _signature(obj: Any, sage: bool) -> str:
    if sage:
        try:
            from sage.misc.sageinspect import sage_getdef

            d = sage_getdef(obj)
            if d:
                return str(d)
        except Exception:  # noqa: S110
            pass
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""


def _doc(obj: Any, sage: bool) -> str:
    if sage:
        try:
            from sage.misc.sageinspect import sage_getdoc

            d = sage_getdoc(obj)
            if d and d.strip():
                return d.strip()
        except Exception:  # noqa: S110
            pass
    return inspect.getdoc(obj) or ""


def _source(obj: Any, sage: bool) -> str:
    if sage:
        try:
            from sage.misc.sageinspect import sage_getsource

            s = sage_getsource(obj)
            if s:
                return s
        except Exception:  # noqa: S110
            pass
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _where(obj: Any) -> str:
    from sagews.worker.tracebacks import short_path

    try:
        f = inspect.getsourcefile(obj) or inspect.getfile(obj)
    except TypeError:
        return ""
    return short_path(f) if f else ""
