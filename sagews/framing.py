"""Length-prefixed JSON frames, shared by the worker and log server protocols.

A frame is a 4-byte big-endian unsigned length N followed by N bytes of UTF-8 JSON whose top
level is an object. Frames longer than the configured maximum are refused before their body is
read, so a peer cannot make us buffer more than ``max_size`` bytes. See docs/protocol-worker.md.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 16 * 1024 * 1024


class FrameError(Exception):
    """A frame that cannot be accepted. ``code`` is the protocol error code sent back, if any."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def encode(message: dict[str, Any]) -> bytes:
    """One frame (header and body together, so it goes out in one write: no Nagle stall)."""
    return frame_bytes(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode())


def frame_bytes(body: bytes) -> bytes:
    """A frame around an already encoded JSON body."""
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body)
    except ValueError as exc:  # not UTF-8, not JSON, an integer of more than 4,300 digits
        raise FrameError("bad_json", f"frame is not valid UTF-8 JSON: {str(exc)[:200]}") from None
    except RecursionError:
        raise FrameError("bad_json", "frame is nested too deeply") from None
    if not isinstance(message, dict):
        raise FrameError("bad_message", "a frame must hold a JSON object")
    return message


async def read_frame(
    reader: asyncio.StreamReader, max_size: int = DEFAULT_MAX_FRAME
) -> dict[str, Any] | None:
    """Read one frame; None at a clean end of stream. Raises FrameError or IncompleteReadError."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    (length,) = HEADER.unpack(header)
    if length > max_size:
        raise FrameError("too_large", f"frame of {length} bytes exceeds the limit of {max_size}")
    return decode_body(await reader.readexactly(length))
