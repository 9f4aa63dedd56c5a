"""REST for workspace management: list, create, get, rename, copy, delete, members, share, publish."""

from __future__ import annotations

from typing import Any

from sagews.backend import workspaces as wsmod
from sagews.backend.handlers.base import ApiError, ApiHandler


class ListHandler(ApiHandler):
    async def get(self) -> None:
        rows = await self.backend.db.run(wsmod.db_list, self.user.id)
        self.write_json({"workspaces": rows})

    async def post(self) -> None:
        name = self.field(self.body(), "name")
        ws = await self.backend.workspaces.create(self.user.id, name)
        self.write_json({"workspace": {**ws, "owner": self.user.name, "role": "owner"}})


class OneHandler(ApiHandler):
    async def get(self, ws_id: str) -> None:
        svc = self.backend.workspaces
        role = await svc.role(ws_id, self.user.id)
        m = await svc.meta(ws_id)
        out = {k: m[k] for k in ("id", "name", "owner", "head_commit", "last_activity")}
        self.write_json({"workspace": {**out, "role": role}})

    async def delete(self, ws_id: str) -> None:
        svc = self.backend.workspaces
        await svc.require(ws_id, self.user.id, ("owner",))
        await svc.delete(wsmod.check_id(ws_id))
        self.write_json({})


class ActionHandler(ApiHandler):
    async def get(self, ws_id: str, action: str) -> None:
        svc = self.backend.workspaces
        await svc.role(ws_id, self.user.id)
        ws_id = wsmod.check_id(ws_id)
        if action == "members":
            self.write_json({"members": await self.backend.db.run(wsmod.db_members, ws_id)})
        elif action == "published":
            self.write_json({"published": await self.backend.db.run(wsmod.db_published, ws_id)})
        elif action == "download":
            await self.download(ws_id)
        else:
            raise ApiError(404, "not_found", f"No such action: {action}")

    async def download(self, ws_id: str) -> None:
        """The last save as one git bundle or a zip of its files (``?format=bundle|zip``)."""
        from sagews.backend.export import ExportError, export

        fmt = self.get_argument("format", "zip")
        if fmt not in ("bundle", "zip"):
            raise ApiError(400, "bad_field", "format must be bundle or zip")
        svc = self.backend.workspaces
        ow = svc.open.get(ws_id)
        if ow is not None and ow.dirty and (await svc.role(ws_id, self.user.id)) != "viewer":
            await svc.save(ws_id, "save before download")
        chain = await self.backend.db.run(wsmod.db_chain, ws_id)
        try:
            data = await export(chain, fmt)
        except ExportError as exc:
            raise ApiError(404 if not chain else 500, "not_found" if not chain else "git", str(exc)) from None
        name = (await svc.meta(ws_id))["name"]
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:60] or "workspace"
        self.set_header("Content-Type", "application/zip" if fmt == "zip" else "application/octet-stream")
        self.set_header("Content-Disposition", f'attachment; filename="{safe}.{fmt}"')
        self.finish(data)

    async def post(self, ws_id: str, action: str) -> None:
        svc, uid, b = self.backend.workspaces, self.user.id, self.body()
        out: dict[str, Any] = {}
        if action == "rename":
            await svc.require(ws_id, uid, ("owner",))
            await svc.write(wsmod.db_rename, wsmod.check_id(ws_id), wsmod.check_name(b.get("name")))
        elif action == "copy":
            await svc.role(ws_id, uid)  # any member may copy what they can read
            ws = await svc.copy(wsmod.check_id(ws_id), uid, self.field(b, "name"))
            out = {"workspace": {**ws, "owner": self.user.name, "role": "owner"}}
        elif action == "share":
            await svc.require(ws_id, uid, ("owner",))
            await svc.share(wsmod.check_id(ws_id), b.get("username"), b.get("role"))
        elif action == "publish":
            await svc.require(ws_id, uid, ("owner", "editor"))
            if b.get("folder") is True:  # a folder (or "/": the workspace) as a site, sagews/backend/sites.py
                slug = await self.backend.sites.publish(wsmod.check_id(ws_id), b.get("path"))
            else:
                slug = await svc.publish(wsmod.check_id(ws_id), b.get("path"))
            out = {"url": f"/pub/{slug}"}
        elif action == "unpublish":
            await svc.require(ws_id, uid, ("owner", "editor"))
            await self.backend.db.run(wsmod.db_unpublish, wsmod.check_id(ws_id), self.field(b, "path"))
        elif action == "save":
            await svc.require(ws_id, uid, ("owner", "editor"))
            out = await svc.save(
                wsmod.check_id(ws_id), b.get("message") if isinstance(b.get("message"), str) else None
            )
        else:
            raise ApiError(404, "not_found", f"No such action: {action}")
        self.write_json(out)


class PubRawHandler(ApiHandler):
    """A published snapshot (no login); pub.html renders it. A file: ``{path, workspace, text,
    published}``; a site: its file list, or with ``?path=`` one of its files (sagews/backend/sites.py)."""

    async def prepare(self) -> None:
        self.current_user = None

    async def get(self, slug: str) -> None:
        path = self.get_argument("path", None)
        if not wsmod.SlugRe.match(slug) or (path is not None and len(path) > 1024):
            raise ApiError(404, "not_found", "Not published")
        pub = await self.backend.sites.raw(slug, path)
        if pub is None:
            raise ApiError(404, "not_found", "Not published")
        self.write_json(pub)


routes = [
    (r"/api/workspaces", ListHandler),
    (r"/api/workspaces/([^/]+)", OneHandler),
    (r"/api/workspaces/([^/]+)/([a-z]+)", ActionHandler),
    (r"/pub/([^/]+)/raw", PubRawHandler),
]
