"""Operations: /healthz (liveness, for the load balancers), /readyz (readiness: DB, workers, cache) and
/metrics (Prometheus, monitoring networks only)."""

from __future__ import annotations

import gc
import ipaddress
import time

from sqlalchemy import text
from sqlalchemy.orm import Session

from sagews.backend.handlers.base import ApiError, ApiHandler, BaseHandler


def _ping(s: Session) -> None:
    s.execute(text("SELECT 1"))


class HealthHandler(BaseHandler):
    """Liveness for the load balancers: 200 while this process serves requests, 503 once it is shutting
    down (so HAProxy takes it out before it closes its sockets). It never looks at the database or the
    workers: a brief DB or worker outage must not take every backend out of the pool at once (clients
    then get a clear ``db_unavailable`` / ``no_worker`` from a live backend instead of HAProxy's 503)."""

    async def prepare(self) -> None:
        self.current_user = None

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        if self.backend.stopping:
            self.set_status(503)
            self.finish("shutting down\n")
        else:
            self.finish("ok\n")


class ReadyHandler(BaseHandler):
    """Readiness for operators and monitoring: the database answers, at least one worker is healthy,
    memcached (when configured) answers. 200 ``ready`` or 503 with one line per problem."""

    async def prepare(self) -> None:
        self.current_user = None

    async def get(self) -> None:
        app = self.backend
        problems = []
        if app.stopping:
            problems.append("shutting down")
        now = time.monotonic()
        if now - app.last_db_ok > 2:  # at most one DB round trip per 2 s, however often probed
            try:
                await app.db.run(_ping)
                app.last_db_ok = now
            except Exception as exc:
                problems.append(f"database: {type(exc).__name__}")
        if not app.pool.healthy():
            problems.append("no healthy worker")
        if app.cache.enabled and not await app.cache.probe():
            problems.append("memcached: no server answers")
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        if problems:
            self.set_status(503)
            self.finish("\n".join(problems) + "\n")
        else:
            self.finish("ready\n")


class MetricsHandler(BaseHandler):
    async def prepare(self) -> None:
        self.current_user = None

    def _allowed(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(
            addr in ipaddress.ip_network(n, strict=False) for n in self.backend.config.metrics_networks
        )

    async def get(self) -> None:
        app = self.backend
        if not self._allowed(self.request.remote_ip or ""):
            self.set_status(403)
            self.finish("metrics are served to the monitoring networks only\n")
            return
        pool = app.db.engine.pool
        cache = app.cache
        lookups = cache.hits + cache.misses
        extra = {
            "sagews_workers_healthy": len(app.pool.healthy()),
            "sagews_workers_known": len(app.pool.links),
            "sagews_workspaces_open": len(app.workspaces.open),
            "sagews_events_connected": 1.0 if app.events.connected else 0.0,
            "sagews_events_received": app.events.received,
            "sagews_db_pool_checked_out": float(getattr(pool, "checkedout", lambda: 0)()),
            "sagews_db_pool_size": float(getattr(pool, "size", lambda: 0)()),
            "sagews_db_pool_overflow": float(getattr(pool, "overflow", lambda: 0)()),
            "sagews_cache_up": 1.0 if await cache.probe() else 0.0,
            "sagews_cache_hits": cache.hits,
            "sagews_cache_misses": cache.misses,
            "sagews_cache_errors": cache.errors,
            "sagews_cache_rejected": cache.rejected,
            "sagews_cache_hit_ratio": cache.hits / lookups if lookups else 0.0,
            "sagews_gc_full_collections": app.gc_watch.full,
            "sagews_gc_longest_pause_seconds": app.gc_watch.longest,
            "sagews_gc_frozen_objects": gc.get_freeze_count(),
        }
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=UTF-8")
        text = app.metrics.render(extra, {"sagews_gc_pause_seconds": app.gc_watch.pauses})
        self.finish(text + app.backups.render(await app.backups.get()))


class PageHandler(BaseHandler):
    """The app shell (dev: served from static/; production: nginx) under the client's CSP."""

    CSP = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "font-src 'self'; connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'; object-src 'none'"
    )

    async def prepare(self) -> None:
        self.current_user = None

    def get(self, *_: str) -> None:
        static = self.backend.config.static_dir
        if not static:
            self.send_error(404)
            return
        from pathlib import Path

        name = "pub.html" if self.request.path.startswith("/pub/") else "index.html"
        self.set_header("Content-Security-Policy", self.CSP)
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish((Path(static) / name).read_bytes())


class NotFoundHandler(BaseHandler):
    """Any path no route matches (Tornado's ``default_handler_class``): a plain 404."""

    async def prepare(self) -> None:
        self.set_status(404)
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish("not found\n")


class ApiNotFoundHandler(ApiHandler):
    """Any other /api/ path: a JSON 404 (not Tornado's HTML page)."""

    async def prepare(self) -> None:
        raise ApiError(404, "not_found", "No such API endpoint")


routes = [
    (r"/healthz", HealthHandler),
    (r"/readyz", ReadyHandler),
    (r"/metrics", MetricsHandler),
]
page_routes = [(r"/(pub/[^/]+)?", PageHandler)]
