"""systemd readiness notification (``Type=notify`` units), without a dependency on libsystemd.

``notify("READY=1")`` sends one datagram to ``$NOTIFY_SOCKET`` (set by systemd for the unit's main
process); outside systemd it does nothing. The services call :func:`ready` once they accept work,
and :func:`stopping` when they begin a graceful shutdown, so ``systemctl start`` returns only when
the service is really up and a restart during a deploy waits for it.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("sagews.sdnotify")


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to systemd; False when not run by systemd or on error."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):  # abstract namespace
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(path)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify(%s) failed: %s", state.split("\n", 1)[0], exc)
        return False
    return True


def ready(status: str = "") -> bool:
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def stopping(status: str = "") -> bool:
    return notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))
