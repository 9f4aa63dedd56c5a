"""Wire-level constants of the worker protocol (docs/protocol-worker.md) and its error type."""

from __future__ import annotations

import re

PROTOCOL_VERSIONS = (1,)
CHUNK = 65536
FRAME_BODY_TIMEOUT = 60.0  # a started frame must be complete within this (slow or stuck peers)
COMMIT_ID = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
MAX_QUEUED = 100  # executions waiting for a busy session
MAX_QUEUED_OPS = 100  # file/git operations of one session waiting for a helper slot
MAX_IN_FLIGHT = 2000  # requests of one connection being handled at once; more get `busy`


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
