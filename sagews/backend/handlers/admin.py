"""Admin API (accounts with ``is_admin``): workers, every workspace, draining a worker."""

from __future__ import annotations

from sqlalchemy.orm import Session

from sagews.backend.handlers.base import ApiError, ApiHandler
from sagews.backend.workers import list_workers
from sagews.backend.workspaces import db_list_all
from sagews.db.models import Worker, WorkerState


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


routes = [
    (r"/api/admin/workers", WorkersHandler),
    (r"/api/admin/workers/([0-9]{1,9})/drain", DrainHandler),
    (r"/api/admin/workspaces", AllWorkspacesHandler),
]
