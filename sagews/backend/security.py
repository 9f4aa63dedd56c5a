"""HTTP-level containment of the backend (docs/security.md, "Backend").

* :class:`SecurityHeaders`: every response (API, SockJS, error pages, Tornado's own 404s) carries a CSP
  (``default-src 'none'`` unless the handler set its own, as the app shell does) and ``nosniff``.
* :class:`SockJSDisabledHandler`: what ``/sockjs/iframe*.html`` serves instead of sockjs-tornado's page.
* :func:`quiet_sockjs_transports`: sockjs-tornado logs a traceback and drops the connection for every
  websocket frame that is not JSON; ours drop it with a counter instead (fuzzing costs no log lines).
* :func:`guarded_accept_sockets`: an accept loop that survives the descriptor limit. Tornado's re-raises
  EMFILE, the listening socket stays readable and the loop spins at 100 % CPU serving no one; ours gives
  up a reserved descriptor, accepts the waiting connection and resets it at once (the client, or
  HAProxy, learns at once and can go elsewhere), and pauses accepting for 100 ms when even that fails,
  so established connections keep being served.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import tornado.web
from sockjs.tornado import transports
from tornado.httputil import HTTPHeaders, HTTPServerRequest
from tornado.ioloop import IOLoop

log = logging.getLogger("sagews.backend.security")

# for responses that are not the app shell: nothing may load, nothing may frame it
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


class SecurityHeaders(tornado.web.OutputTransform):
    def __init__(self, request: HTTPServerRequest) -> None:
        super().__init__(request)

    def transform_first_chunk(
        self, status_code: int, headers: HTTPHeaders, chunk: bytes, finishing: bool
    ) -> tuple[int, HTTPHeaders, bytes]:
        if "Content-Security-Policy" not in headers:
            headers["Content-Security-Policy"] = DEFAULT_CSP
        if "X-Content-Type-Options" not in headers:
            headers["X-Content-Type-Options"] = "nosniff"
        return status_code, headers, chunk


class SockJSDisabledHandler(tornado.web.RequestHandler):
    """The iframe-based SockJS transports are not offered (docs/security.md explains why)."""

    def get(self) -> None:
        self.set_status(404)
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish("not served: use the websocket or xhr transports\n")


def quiet_sockjs_transports(urls: list[Any], metrics: Any) -> list[Any]:
    """The router's routes, with the websocket transport replaced by one that drops a connection
    sending a non-JSON frame without logging a traceback (``metrics.bad_frames`` counts them)."""

    class QuietWebSocketTransport(transports.WebSocketTransport):  # type: ignore[misc]
        def on_message(self, message: str | bytes) -> None:
            if not message or not self.session:
                return
            try:
                msg = json.loads(message)
            except (ValueError, RecursionError):
                metrics.bad_frames += 1
                self.abort_connection()
                return
            try:
                self.session.on_messages(msg if isinstance(msg, list) else (msg,))
            except Exception:
                log.exception("SockJS message handling failed")  # a bug: LiveConnection never raises
                self.abort_connection()

    out = []
    for route in urls:
        quiet = route[1] is transports.WebSocketTransport
        out.append((route[0], QuietWebSocketTransport, *route[2:]) if quiet else route)
    return out


_SHED_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class _Acceptor:
    def __init__(self, sock: socket.socket, callback: Callable[[socket.socket, Any], None], metrics: Any):
        self.sock = sock
        self.callback = callback
        self.metrics = metrics
        self.loop = IOLoop.current()
        self.removed = False
        self.paused = False
        self.reserve: int | None = self._spare()
        self.last_warning = 0.0
        self.loop.add_handler(sock, self._ready, IOLoop.READ)

    @staticmethod
    def _spare() -> int | None:
        try:
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None

    def _ready(self, fd: Any, events: int) -> None:
        for _ in range(128):  # tornado's _DEFAULT_BACKLOG: never starve the rest of the loop
            if self.removed or self.paused:
                return
            try:
                conn, address = self.sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in _SHED_ERRNOS:
                    raise
                self._shed(exc)
                return
            self.callback(conn, address)

    def _shed(self, exc: OSError) -> None:
        self.metrics.accept_refused += 1
        now = time.monotonic()
        if now - self.last_warning > 10:
            self.last_warning = now
            log.warning("out of file descriptors (%s): refusing new connections", exc.strerror)
        if self.reserve is not None:
            os.close(self.reserve)
            self.reserve = None
            try:
                conn, _ = self.sock.accept()
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()  # a reset: the client learns at once
            except OSError:
                pass
            self.reserve = self._spare()
        if self.reserve is None:  # not even one descriptor: stop looking at the socket for a while
            self.paused = True
            self.loop.remove_handler(self.sock)
            self.loop.call_later(0.1, self._resume)

    def _resume(self) -> None:
        if self.removed:
            return
        self.paused = False
        if self.reserve is None:
            self.reserve = self._spare()
        self.loop.add_handler(self.sock, self._ready, IOLoop.READ)

    def remove(self) -> None:
        if not self.removed:
            self.removed = True
            if not self.paused:
                self.loop.remove_handler(self.sock)
            if self.reserve is not None:
                os.close(self.reserve)
                self.reserve = None


def guarded_accept_sockets(server: Any, sockets: list[socket.socket], metrics: Any) -> None:
    """``server.add_sockets(sockets)`` with :class:`_Acceptor` as the accept loop (TCPServer keeps the
    sockets and their remove callbacks in ``_sockets`` / ``_handlers``; ``server.stop()`` uses them)."""
    for sock in sockets:
        server._sockets[sock.fileno()] = sock
        server._handlers[sock.fileno()] = _Acceptor(sock, server._handle_connection, metrics).remove
