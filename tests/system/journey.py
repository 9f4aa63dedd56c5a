# ruff: noqa: ASYNC109
"""What a user does, spoken over the real client protocol (HTTPS + SockJS), for the system tests.

Used by the Molecule scenarios' verify steps (molecule/default, molecule/topology) against a deployed
appliance: the same clients as tests/backend (tests/backend/helpers.py), over HTTPS verified with the
appliance CA, through the load balancer.
"""

from __future__ import annotations

import secrets
from typing import Any

from tests.backend.helpers import HttpUser, SockClient

SAGE_FACTOR = "factor(2^64-1)"
SAGE_FACTOR_RESULT = "3 * 5 * 17 * 257 * 641 * 65537 * 6700417"


async def new_user(base: str, ca: str, prefix: str = "user") -> HttpUser:
    u = HttpUser(base, ca=ca)
    name = f"{prefix}{secrets.token_hex(3)}"
    code, body = await u.signup(name)
    assert code == 200, (code, body)
    u.name = name  # type: ignore[attr-defined]
    return u


async def new_workspace(u: HttpUser, name: str = "journey") -> str:
    code, body = await u.req("POST", "/api/workspaces", {"name": name})
    assert code == 200, (code, body)
    return str(body["workspace"]["id"])


async def connect(u: HttpUser, transport: str = "websocket") -> SockClient:
    return await SockClient(u, transport).connect()


def text_of(frames: list[dict[str, Any]]) -> str:
    """What the user sees of an execution: streamed text plus the result's text/plain."""
    out = []
    for f in frames:
        if f["type"] == "stream":
            out.append(f["text"])
        elif f["type"] in ("result", "display"):
            data = f.get("data") or {}
            out.append(str(data.get("text/plain", "")))
    return "".join(out)


async def run(
    c: SockClient, ws: str, code: str, engine: str, timeout: float = 120
) -> tuple[str, dict[str, Any]]:
    frames = await c.frames({"type": "exec", "session": ws, "code": code, "engine": engine}, timeout=timeout)
    return text_of(frames), frames[-1]
