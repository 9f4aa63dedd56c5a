"""The backend's Tornado application and server entry point (``sagews-backend``, ``sagews backend``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import signal
import ssl
import time
from pathlib import Path
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web
from sockjs.tornado import SockJSRouter

from sagews import sdnotify
from sagews.backend.accounts import PasswordWork, RateLimiter
from sagews.backend.backups import BackupOutcomes
from sagews.backend.cache import Cache, derive_secret
from sagews.backend.config import BackendConfig, load
from sagews.backend.events import EventBus, RemotePresence
from sagews.backend.handlers import admin, auth, ops
from sagews.backend.handlers import workspaces as ws_handlers
from sagews.backend.heartbeats import GCWatch, HeartbeatWheel, session_class, tune_gc
from sagews.backend.limits import AccountLimits
from sagews.backend.live import LiveConnection
from sagews.backend.lockout import LoginGuard, LoginPolicy
from sagews.backend.metrics import Metrics
from sagews.backend.presence import Presence
from sagews.backend.security import (
    SecurityHeaders,
    SockJSDisabledHandler,
    guarded_accept_sockets,
    quiet_sockjs_transports,
)
from sagews.backend.sites import Sites
from sagews.backend.workers import WorkerPool
from sagews.backend.workspaces import Workspaces
from sagews.db import Database

log = logging.getLogger("sagews.backend")
# The SockJS endpoint. static/js/protocol.js connects here and the load balancers stick the sessions
# found under it (haproxy_sockjs_prefixes, from sagews_sockjs_prefix in playbooks/vars/sagews.yml).
SOCKJS_PREFIX = "/sockjs"


class StaticHandler(tornado.web.StaticFileHandler):
    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "max-age=86400" if path.startswith("vendor/") else "no-cache")
        self.set_header("X-Content-Type-Options", "nosniff")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BackendApp(tornado.web.Application):
    """Owns the routes, the settings and the shared services (DB, cache, workers, workspaces)."""

    def __init__(self, config: BackendConfig, db: Database | None = None) -> None:
        if not config.cookie_secret or len(config.cookie_secret) < 16:
            raise ValueError("cookie_secret must be set (at least 16 characters)")
        self.config = config
        self.db = db or Database(config.db)
        if config.cache_secret and len(config.cache_secret) < 16:
            raise ValueError("cache_secret must be at least 16 characters")
        secret = config.cache_secret.encode() if config.cache_secret else derive_secret(config.cookie_secret)
        self.cache = Cache(config.memcached, secret, config.cache_ttl)
        self.metrics = Metrics()
        self.backups = BackupOutcomes(self.db)  # the backup jobs' outcomes, for /metrics
        self.pool = WorkerPool(
            self.db, config.worker_cert, config.worker_key, config.worker_ca, grace=config.heartbeat_timeout
        )
        self.workspaces = Workspaces(self.db, self.cache, self.pool, self.metrics)
        self.workspaces.repack_after = config.repack_after
        self.workspaces.max_open = config.max_open_workspaces
        self.workspaces.max_stored = config.max_stored_mb << 20
        self.sites = Sites(self.db, self.workspaces)  # published folders (sagews/backend/sites.py)
        self.presence = self.workspaces.presence
        self.live: set[LiveConnection] = set()
        self.events = EventBus(self.db, self._on_event)
        self.workspaces.bus_id = self.events.id
        self.workspaces.on_acl = self.apply_acl
        self.announce_seconds = 30.0
        self.remote_presence = RemotePresence(ttl=3 * self.announce_seconds)
        self.coalescer = Presence(config.presence_interval, self._flush_presence)
        self.login_guard = LoginGuard(
            self.cache,
            LoginPolicy(
                free=config.login_free_attempts,
                base_delay=config.login_backoff_seconds,
                max_delay=config.login_backoff_max_seconds,
                window=config.login_window_seconds,
                account_limit=config.login_account_failures,
                account_interval=config.login_account_interval_seconds,
                ip_limit=config.login_ip_failures,
            ),
        )
        self.signup_limiter = RateLimiter(config.signups_per_ip)
        self.password_work = PasswordWork(config.password_threads)
        self.account_limits = AccountLimits(
            config.account_rate,
            config.account_burst,
            config.account_inflight,
            config.account_heavy_rate,
            config.account_heavy_burst,
        )
        self.last_db_ok = 0.0
        self.stopping = False  # a graceful shutdown began: /healthz answers 503
        self._tasks: list[asyncio.Task[Any]] = []
        self._pending: set[asyncio.Future[Any]] = set()
        conn_cls = type("Live", (LiveConnection,), {"app": self})
        self.heartbeats = HeartbeatWheel(25.0)  # sockjs-tornado's heartbeat_delay
        self.gc_watch = GCWatch()
        self.router = SockJSRouter(
            conn_cls,
            SOCKJS_PREFIX,
            session_kls=session_class(self.heartbeats),
            user_settings={
                "disabled_transports": ["jsonp", "htmlfile"],
                "jsessionid": False,
                "disable_nagle": True,
                # frames sent in one event-loop turn go out as one SockJS frame (one websocket write):
                # an exec's output or a burst of replies costs one syscall, not one per message
                "immediate_flush": False,
                "verify_ip": False,  # behind HAProxy the source address can change between requests
            },
        )
        routes: list[Any] = [*auth.routes, *ws_handlers.routes, *admin.routes, *ops.routes]
        routes.append((r"/api/.*", ops.ApiNotFoundHandler))
        if config.static_dir:
            routes.append((r"/static/(.*)", StaticHandler, {"path": config.static_dir}))
            routes += ops.page_routes
        # the iframe transports are for cross-origin pages on old browsers; our client is same-origin
        # (websocket, then xhr-streaming/polling, eventsource), and sockjs-tornado's iframe page loads
        # sockjs from a CDN: it is not served at all (docs/security.md)
        routes.append((r"/sockjs/iframe[0-9-.a-z_]*\.html", SockJSDisabledHandler))
        routes += quiet_sockjs_transports(self.router.urls, self.metrics)
        secure = config.secure_cookies
        super().__init__(
            routes,
            cookie_secret=config.cookie_secret,
            xsrf_cookies=True,
            xsrf_cookie_kwargs={"secure": secure, "samesite": "Lax"},
            websocket_max_message_size=max(config.max_message * 2, 1 << 20),
            transforms=[SecurityHeaders],
            default_handler_class=ops.NotFoundHandler,
        )

    # presence and file_changed, across backends ------------------------------------------------
    def local_names(self, ws_id: str) -> list[str]:
        return sorted({c.user.name for c in self.presence.get(ws_id, ()) if c.user is not None})

    def presence_names(self, ws_id: str) -> list[str]:
        return sorted(set(self.local_names(ws_id)) | self.remote_presence.names(ws_id))

    def _send_presence(self, ws_id: str) -> None:
        self.coalescer.changed(ws_id, publish=False)

    def _flush_presence(self, ws_id: str, publish: bool) -> None:
        """Coalesced (``presence_interval``): send the list only to members who have not seen it yet,
        and publish this backend's names to the others only when they changed."""
        names = self.presence_names(ws_id)
        note: dict[str, Any] | None = None
        for c in list(self.presence.get(ws_id, ())):
            if c.last_presence.get(ws_id) != names:
                c.last_presence[ws_id] = names
                if note is None:
                    note = {"type": "presence", "workspace": ws_id, "users": names}
                c.send_json(note)
        if publish:
            local = self.local_names(ws_id)
            if self.coalescer.published.get(ws_id) != local:
                self.coalescer.published[ws_id] = local
                if not local:
                    self.coalescer.published.pop(ws_id, None)
                self._spawn(self.events.publish({"kind": "presence", "ws": ws_id, "users": local}))

    def presence_changed(self, ws_id: str) -> None:
        """A connection of this backend opened or left ``ws_id``: tell local members and other backends
        (at most once per ``presence_interval`` per workspace, and only what changed)."""
        self.coalescer.changed(ws_id, publish=True)

    def file_changed(self, ws_id: str, path: str, by: str, origin: Any = None) -> None:
        note = {"type": "file_changed", "workspace": ws_id, "path": path, "by": by}
        for c in list(self.presence.get(ws_id, ())):
            if c is not origin:
                c.send_json(note)
        if origin is not None and self.remote_presence.names(ws_id):  # only if members are elsewhere:
            # a file operation costs no DB round trip unless another backend has someone in it
            self._spawn(self.events.publish({"kind": "file_changed", "ws": ws_id, "path": path, "by": by}))

    def sessions_revoked(self, token_hashes: list[str], publish: bool = True) -> None:
        """Close live connections logged in with these sessions (here, and on the other backends)."""
        wanted = set(token_hashes)
        for conn in list(self.live):
            if conn.token_hash in wanted:
                conn.session.close(4001, "logged out")
        if publish and token_hashes:
            for i in range(0, len(token_hashes), 100):  # NOTIFY payloads stay small
                self._spawn(
                    self.events.publish({"kind": "revoke", "ws": "", "th": token_hashes[i : i + 100]})
                )

    async def apply_acl(self, ws_id: str) -> None:
        """Re-read who may use ``ws_id`` (one DB read per change, not per message) and apply it to this
        backend's live connections: a removed member's connection leaves the workspace at once, a
        changed role takes effect on its next request (live.py keeps the role in the connection)."""
        from sagews.backend.workspaces import WorkspaceError, db_meta

        if not self.presence.get(ws_id):
            return
        await self.workspaces.invalidate(ws_id)
        try:
            members = (await self.db.run(db_meta, ws_id))["members"]
        except WorkspaceError:  # deleted
            members = {}
        for conn in list(self.presence.get(ws_id, ())):
            if conn.user is None:
                continue
            role = members.get(str(conn.user.id))
            if role is None:
                conn.revoke(ws_id, "access revoked" if members else "workspace deleted")
            else:
                conn.workspaces[ws_id] = role
                self.workspaces.terminals.role_changed(conn, ws_id, role)  # a viewer: detached now

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("kind") == "revoke" and isinstance(event.get("th"), list):
            self.sessions_revoked([str(h) for h in event["th"]], publish=False)
            return
        ws_id = event.get("ws")
        if not isinstance(ws_id, str):
            return
        if event.get("kind") == "acl":
            self._spawn(self.apply_acl(ws_id))
            return
        if event.get("kind") == "presence_many" and isinstance(event.get("items"), list):
            for item in event["items"][:1000]:
                if isinstance(item, list) and len(item) == 2 and isinstance(item[1], list):
                    self.remote_presence.update(
                        str(item[0]), str(event.get("from")), [str(n) for n in item[1]]
                    )
            return
        if event.get("kind") == "presence" and isinstance(event.get("users"), list):
            names = [str(n) for n in event["users"]][:1000]
            self.remote_presence.update(ws_id, str(event.get("from")), names)
            self._send_presence(ws_id)
        elif event.get("kind") == "file_changed":
            self.file_changed(ws_id, str(event.get("path")), str(event.get("by")))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _announce(self) -> None:
        """Re-announce this backend's presence lists (other backends forget silent ones after 3
        periods), many workspaces per NOTIFY: 10,000 open workspaces cost ~100 NOTIFYs per period."""
        while True:
            await asyncio.sleep(self.announce_seconds)
            batch: list[list[Any]] = []
            size = 0
            for ws_id in list(self.presence):
                item = [ws_id, self.local_names(ws_id)]
                n = len(json.dumps(item)) + 1
                if batch and size + n > 7000:
                    await self.events.publish({"kind": "presence_many", "ws": "", "items": batch})
                    batch, size = [], 0
                batch.append(item)
                size += n
            if batch:
                await self.events.publish({"kind": "presence_many", "ws": "", "items": batch})

    async def start(self) -> None:
        """Register configured workers, first heartbeat, then the periodic tasks."""
        for w in self.config.workers:
            await self.pool.add(w.address, w.port, w.capacity)
        await self.pool.beat_once()
        self.pool.on_beat = self.workspaces.move_off_draining
        self.pool.start(self.config.heartbeat_seconds)
        self.events.start()
        self.heartbeats.start()
        self.gc_watch.install()
        self._tasks.append(asyncio.ensure_future(self._announce()))
        interval = min(self.config.autosave_seconds, self.config.idle_close_seconds)
        self._tasks.append(
            asyncio.ensure_future(self.workspaces.run_housekeeping(interval, self.config.idle_close_seconds))
        )
        self._tasks.append(asyncio.ensure_future(self.workspaces.run_purge(self.config.purge_after_days)))

    async def stop(self) -> None:
        """Save what is dirty, close links and pools."""
        for t in self._tasks:
            t.cancel()
        self.heartbeats.stop()
        self.gc_watch.remove()
        self.coalescer.close()
        await self.events.close()
        for p in list(self._pending):
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(p, 5)
        for ws_id in list(self.workspaces.open):
            try:
                ow = self.workspaces.open.get(ws_id)
                if ow is not None and ow.dirty:
                    await self.workspaces.save(ws_id, "save at backend shutdown")
            except Exception as exc:
                log.warning("save of %s at shutdown failed: %s", ws_id, exc)
        await self.pool.close()
        self.cache.close()
        self.password_work.close()
        await asyncio.get_running_loop().run_in_executor(None, self.db.close)


def ssl_context(config: BackendConfig) -> ssl.SSLContext | None:
    if config.tls_cert and config.tls_key:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(config.tls_cert, config.tls_key)
        return ctx
    if not is_loopback(config.host):
        raise ValueError("TLS (tls_cert, tls_key) is required unless the backend binds to loopback")
    return None


def max_body(config: BackendConfig) -> int:
    """The largest request body any route takes: an ``xhr_send`` of one ``max_message`` message
    (JSON-escaped in the SockJS frame: up to twice as long). API handlers stream and stop at 1 MiB."""
    return 2 * config.max_message + (64 << 10)


def listen(app: BackendApp, port: int | None = None) -> tuple[tornado.httpserver.HTTPServer, int]:
    cfg = app.config
    server = tornado.httpserver.HTTPServer(
        app,
        ssl_options=ssl_context(cfg),
        xheaders=cfg.xheaders,
        max_body_size=max_body(cfg),  # a longer Content-Length is refused before any of it is read
        max_buffer_size=max_body(cfg),
        idle_connection_timeout=120,
        body_timeout=60,
    )
    sockets = tornado.netutil.bind_sockets(cfg.port if port is None else port, address=cfg.host)
    guarded_accept_sockets(server, sockets, app.metrics)  # EMFILE: refuse cheaply, never spin
    return server, int(sockets[0].getsockname()[1])


async def serve(config: BackendConfig, ready: Any = None) -> None:
    handler = None
    if config.logging.get("servers"):
        from sagews.logserver.client import install
        from sagews.logserver.config import ClientConfig

        handler = install(ClientConfig(**config.logging), "backend")
    app = BackendApp(config)
    server, port = listen(app)
    await app.start()
    tune_gc()  # everything that exists now lives as long as the process (heartbeats.py)
    scheme = "https" if app.config.tls_cert else "http"
    print(f"sagews-backend listening on {scheme}://{config.host}:{port}", flush=True)
    sdnotify.ready(f"serving on {scheme}://{config.host}:{port}")
    if ready is not None:
        ready(app, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await drain(app, server, config.shutdown_grace_seconds)
    await app.stop()
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()


async def drain(app: BackendApp, server: tornado.httpserver.HTTPServer, grace: float) -> None:
    """Graceful shutdown: fail the load balancers' health check first (so they stop sending new
    sessions here), stop accepting, let requests in flight finish (up to ``grace`` seconds), then close
    the live connections with 1012 "service restart" so clients reconnect through the load balancer
    to another backend at once. A deploy that drains in HAProxy first loses no request."""
    sdnotify.stopping("draining")
    app.stopping = True
    log.info("shutting down: %d live connections", len(app.live))
    server.stop()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        busy = [t for c in app.live for t in c.tasks if not t.done()]
        if not busy:
            break
        await asyncio.wait(busy, timeout=max(0.05, deadline - time.monotonic()))
    for conn in list(app.live):
        with contextlib.suppress(Exception):
            conn.session.close(1012, "service restart")
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.close_all_connections(), max(0.1, deadline - time.monotonic()))


def check(cfg: BackendConfig) -> int:
    """``--check``: what the backend would refuse at start, without starting (roles validate with it)."""
    problems = []
    if len(cfg.cookie_secret) < 16:
        problems.append("cookie_secret must be set (at least 16 characters)")
    if not (cfg.tls_cert and cfg.tls_key) and not is_loopback(cfg.host):
        problems.append("TLS (tls_cert, tls_key) is required unless the backend binds to loopback")
    for path in (cfg.tls_cert, cfg.tls_key, cfg.worker_cert, cfg.worker_key, cfg.worker_ca):
        if path and not Path(path).is_file():
            problems.append(f"missing file: {path}")
    for p in problems:
        print(f"sagews-backend: {p}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sagews-backend", description="run the sagews backend")
    ap.add_argument("--config", type=Path, help="TOML/JSON file ([backend] and [db] tables)")
    ap.add_argument("--port", type=int)
    ap.add_argument("--log-level", default="INFO", help="DEBUG, INFO (access log), WARNING, ...")
    ap.add_argument("--check", action="store_true", help="check the config file and exit (0: usable)")
    a = ap.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, a.log_level.upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    cfg = load(a.config)
    if a.port is not None:
        cfg.port = a.port
    if a.check:
        return check(cfg)
    run(cfg)
    return 0


def run(config: BackendConfig, ready: Any = None) -> None:
    """``serve(config)`` on uvloop when it is installed (~25 % less latency per hop, docs/benchmarks.md),
    else on asyncio's loop. Every way of starting a backend (``sagews-backend``, ``sagews dev``) should
    come through here."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config, ready))
        return
    uvloop.run(serve(config, ready))
