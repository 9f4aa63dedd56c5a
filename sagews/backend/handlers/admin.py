"""Admin API (accounts with ``is_admin``): workers, every workspace, draining a worker."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from sagews.backend.handlers.base import ApiError, ApiHandler
from sagews.backend.workers import list_workers
from sagews.backend.workspaces import db_list_all, db_set_limits, db_usage
from sagews.db.models import Account, Worker, WorkerState


def _set_draining(s: Session, worker_id: int, draining: bool) -> None:
    w = s.get(Worker, worker_id)
    if w is None:
        raise ApiError(404, "not_found", "No such worker")
    w.state = WorkerState.draining if draining else WorkerState.up


class AdminHandler(ApiHandler):
    async def prepare(self) -> None:
        await super().prepare()
        if not self.user.is_admin:
            raise ApiError(403, "forbidden", "Administrators only")


class WorkersHandler(AdminHandler):
    async def get(self) -> None:
        rows = await self.backend.db.run(list_workers)
        for row in rows:
            link = self.backend.pool.links.get(row["id"])
            row["healthy_here"] = bool(link and link.healthy)
        self.write_json({"workers": rows})


class DrainHandler(AdminHandler):
    async def post(self, worker_id: str) -> None:
        draining = self.field(self.body(), "draining", bool)
        await self.backend.db.run(_set_draining, int(worker_id), draining)
        await self.backend.pool.load_from_db()
        self.write_json({})


class AllWorkspacesHandler(AdminHandler):
    async def get(self) -> None:
        self.write_json({"workspaces": await self.backend.db.run(db_list_all)})


def _account_id(s: Session, name: str) -> int:
    a = s.scalar(select(Account.id).where(Account.email == name.lower()))
    if a is None:
        raise ApiError(404, "no_user", f"No user called {name}")
    return int(a)


def parse_limits(body: dict[str, Any]) -> dict[str, int | None]:
    """``{max_open_workspaces, max_stored_mb}`` (integers >= 0, or null for the default) -> DB columns."""
    out: dict[str, int | None] = {}
    for key, column, scale in (
        ("max_open_workspaces", "max_open_workspaces", 1),
        ("max_stored_mb", "max_stored_bytes", 1 << 20),
    ):
        if key in body:
            v = body[key]
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ApiError(400, "bad_field", f"{key} must be a non-negative integer or null")
            out[column] = None if v is None else v * scale
    if not out:
        raise ApiError(400, "bad_field", "send max_open_workspaces and/or max_stored_mb")
    return out


class AccountLimitsHandler(AdminHandler):
    """GET: an account's caps and usage; POST ``{max_open_workspaces?, max_stored_mb?}`` sets them
    (null: back to the backend's defaults)."""

    async def _usage(self, name: str) -> dict[str, Any]:
        app = self.backend
        account_id = await app.db.run(_account_id, name)
        usage = await app.db.run(db_usage, account_id, app.workspaces.max_open, app.workspaces.max_stored)
        return {"account": name, **usage}

    async def get(self, name: str) -> None:
        self.write_json(await self._usage(name))

    async def post(self, name: str) -> None:
        await self.backend.db.run(db_set_limits, name, parse_limits(self.body()))
        self.write_json(await self._usage(name))


routes = [
    (r"/api/admin/workers", WorkersHandler),
    (r"/api/admin/workers/([0-9]{1,9})/drain", DrainHandler),
    (r"/api/admin/workspaces", AllWorkspacesHandler),
    (r"/api/admin/accounts/([A-Za-z0-9_.@+-]{1,100})/limits", AccountLimitsHandler),
]
