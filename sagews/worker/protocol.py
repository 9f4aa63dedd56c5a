"""Wire-level constants of the worker protocol (docs/protocol-worker.md) and its error type."""

from __future__ import annotations

import re

PROTOCOL_VERSIONS = (1,)
CHUNK = 65536
FRAME_BODY_TIMEOUT = 60.0  # a started frame must be complete within this (slow or stuck peers)
ENGINE_FRAME_MAX = 64 * 1024 * 1024
COMMIT_ID = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
MAX_QUEUED = 100  # executions waiting for a busy session


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
