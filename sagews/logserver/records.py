"""Log record validation and bounds (shared by server and client)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

MAX_RID = 64
MAX_SERVICE = 64
MAX_HOST = 255
MAX_LOGGER = 255


@dataclass
class Limits:
    max_message: int = 32 * 1024  # characters of msg (and of exc); longer ones are cut, marked
    max_extra: int = 8 * 1024  # bytes of JSON in extra; larger extras are replaced by a marker


class Invalid(ValueError):
    pass


def _str(
    rec: dict[str, Any], key: str, limit: int, *, required: bool = True, cut: bool = False
) -> str | None:
    v = rec.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str):
        raise Invalid(f"{key}: expected a string")
    if "\x00" in v:
        v = v.replace("\x00", "\\x00")  # PostgreSQL text cannot hold NUL
    if len(v) > limit:
        if not cut:
            raise Invalid(f"{key}: longer than {limit}")
        v = v[:limit] + "...[truncated]"
    return v


def _int(rec: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = rec.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise Invalid(f"{key}: expected an integer in [{lo}, {hi}]")
    return v


def validate(rec: Any, limits: Limits) -> tuple[dict[str, Any], bool]:
    """A clean copy of ``rec`` and whether something was cut; raises :class:`Invalid`."""
    if not isinstance(rec, dict):
        raise Invalid("a record must be a JSON object")
    ts = rec.get("ts")
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not math.isfinite(ts) or not 0 < ts < 1e11:
        raise Invalid("ts: expected seconds since the epoch")
    rid = _str(rec, "rid", MAX_RID)
    if not rid:
        raise Invalid("rid: empty")
    msg = _str(rec, "msg", limits.max_message, cut=True)
    exc = _str(rec, "exc", limits.max_message, required=False, cut=True)
    cut = len(msg or "") > limits.max_message or len(exc or "") > limits.max_message
    extra = rec.get("extra")
    if extra is not None:
        if not isinstance(extra, dict):
            raise Invalid("extra: expected an object")
        text = json.dumps(extra, separators=(",", ":"))
        if len(text) > limits.max_extra or "\\u0000" in text:
            extra, cut = {"_dropped": f"extra larger than {limits.max_extra} bytes or with NUL"}, True
    out = {
        "rid": rid,
        "ts": float(ts),
        "service": _str(rec, "service", MAX_SERVICE),
        "host": _str(rec, "host", MAX_HOST),
        "pid": _int(rec, "pid", 0, 2**31 - 1),
        "level": _int(rec, "level", 0, 100),
        "logger": _str(rec, "logger", MAX_LOGGER, cut=True),
        "msg": msg,
        "exc": exc,
        "extra": extra,
    }
    return out, cut
