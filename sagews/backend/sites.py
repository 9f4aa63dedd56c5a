"""Published sites: a folder of a workspace (or all of it) as a browsable, read-only site at /pub/<slug>.

A site is a snapshot of the folder's files **as of the last saved version** (one commit: the files of a
site agree with each other), taken from the stored bundles with ``git archive`` (``export.py``; no
worker involved, so a closed workspace can be published too). It is stored like a published file, one
``publications`` row, whose path is the folder with a trailing slash (``"notes/"``; ``"/"`` is the
whole workspace) and whose content is a JSON document::

    {"sagews_site": 1, "files": {"<path in the site>": {"text": ...} | {"b64": ...}},
     "skipped": [{"path", "reason"}]}

Text files (UTF-8) and images (png, jpeg, gif, webp) are published; dotfiles, symlinks, other binary
files and anything beyond the caps below are listed as skipped. ``/pub/<slug>/raw`` answers with the
file list, ``/pub/<slug>/raw?path=<path>`` with one file; parsed snapshots are kept in a small LRU
cache (by slug and publication time, so an update is seen at once).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import posixpath
import stat
import zipfile
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from sagews.backend.export import ExportError, export
from sagews.backend.workspaces import WorkspaceError, db_chain, db_publish
from sagews.db.models import Publication, Workspace

if TYPE_CHECKING:
    from sagews.backend.workspaces import Workspaces
    from sagews.db import Database

MAX_FILES = 1000
MAX_BYTES = 20 << 20  # all files of one site
MAX_FILE = 5 << 20
IMAGES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp"})
CACHE_BYTES = 64 << 20  # parsed snapshots kept in memory, counted by their stored size


def site_key(path: object) -> str:
    """The publication path of a folder: ``"/"`` (or ``""``/``"."``) is the workspace, else ``"dir/"``."""
    if not isinstance(path, str) or len(path) > 1000:
        raise WorkspaceError("bad_field", "path must be a folder of the workspace")
    p = path.strip().strip("/")
    if p in ("", "."):
        return "/"
    parts = p.split("/")
    if any(x in ("", ".", "..") or x.startswith(".git") for x in parts):
        raise WorkspaceError("path_refused", "That folder cannot be published")
    return "/".join(parts) + "/"


def is_site(path: str) -> bool:
    return path.endswith("/")


def build(archive: bytes, key: str) -> str:
    """The snapshot document of the folder ``key`` from a zip of the saved tree (blocking: an executor)."""
    prefix = "" if key == "/" else key
    files: dict[str, dict[str, str]] = {}
    skipped: list[dict[str, str]] = []
    total = 0
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        for info in zf.infolist():
            name = info.filename
            if info.is_dir() or not name.startswith(prefix):
                continue
            rel = name[len(prefix) :]
            if any(part.startswith(".") for part in rel.split("/")):
                continue  # dotfiles and .keep markers are not content
            if stat.S_ISLNK(info.external_attr >> 16):
                skipped.append({"path": rel, "reason": "symbolic link"})
                continue
            if info.file_size > MAX_FILE or total + info.file_size > MAX_BYTES or len(files) >= MAX_FILES:
                skipped.append({"path": rel, "reason": "over the size limits of a site"})
                continue
            data = zf.read(info)
            try:
                files[rel] = {"text": data.decode("utf-8")}
            except UnicodeDecodeError:
                if posixpath.splitext(rel)[1].lower() not in IMAGES:
                    skipped.append({"path": rel, "reason": "binary file"})
                    continue
                files[rel] = {"b64": base64.b64encode(data).decode("ascii")}
            total += info.file_size
    if not files:
        where = "the workspace" if key == "/" else key
        raise WorkspaceError("not_found", f"Nothing to publish in {where} (as of the last saved version)")
    return json.dumps({"sagews_site": 1, "files": files, "skipped": skipped}, separators=(",", ":"))


def db_publication_meta(s: Session, slug: str) -> dict[str, Any] | None:
    row = s.execute(
        select(Publication.path, Publication.updated, Workspace.name)
        .join(Workspace, Workspace.id == Publication.workspace_id)
        .where(Publication.slug == slug, Workspace.deleted.is_(False))
    ).first()
    if row is None:
        return None
    return {"path": row[0], "published": row[1].timestamp(), "workspace": row[2]}


def db_publication_content(s: Session, slug: str) -> str | None:
    return s.scalar(select(Publication.html).where(Publication.slug == slug))


class Sites:
    """Publishes sites and answers ``/pub/<slug>/raw`` for files and sites alike."""

    def __init__(self, db: Database, workspaces: Workspaces) -> None:
        self.db = db
        self.workspaces = workspaces
        self._cache: OrderedDict[tuple[str, float], tuple[int, dict[str, Any]]] = OrderedDict()
        self._cached_bytes = 0

    async def publish(self, ws_id: str, path: object) -> str:
        """Snapshot a folder as of the last save (saving first if the open workspace changed); the slug."""
        key = site_key(path)
        ow = self.workspaces.open.get(ws_id)
        if ow is not None and ow.dirty:
            what = "the workspace" if key == "/" else key
            await self.workspaces.save(ws_id, f"save before publishing {what}")
        chain = await self.db.run(db_chain, ws_id)
        if not chain:
            raise WorkspaceError("nothing_saved", "Save a version first: a site shows the last save")
        try:
            archive = await export(chain, "zip")
        except ExportError as exc:
            raise WorkspaceError("git", str(exc), 500) from None
        doc = await asyncio.get_running_loop().run_in_executor(None, build, archive, key)
        return str(await self.db.run(db_publish, ws_id, key, doc))

    async def _snapshot(self, slug: str, meta: dict[str, Any]) -> dict[str, Any] | None:
        ck = (slug, meta["published"])
        hit = self._cache.get(ck)
        if hit is not None:
            self._cache.move_to_end(ck)
            return hit[1]
        text = await self.db.run(db_publication_content, slug)
        if text is None:
            return None
        doc = await asyncio.get_running_loop().run_in_executor(None, json.loads, text)
        if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
            return None
        doc["listing"] = [
            {"path": p, "size": len(f["text"].encode()) if "text" in f else len(f.get("b64", "")) * 3 // 4}
            for p, f in sorted(doc["files"].items())
        ]
        self._cache[ck] = (len(text), doc)
        self._cached_bytes += len(text)
        while self._cached_bytes > CACHE_BYTES and len(self._cache) > 1:
            _, (size, _doc) = self._cache.popitem(last=False)
            self._cached_bytes -= size
        return doc

    async def raw(self, slug: str, path: str | None) -> dict[str, Any] | None:
        """What ``/pub/<slug>/raw[?path=]`` answers; ``None``: 404."""
        meta = await self.db.run(db_publication_meta, slug)
        if meta is None:
            return None
        if not is_site(meta["path"]):
            if path:
                return None
            text = await self.db.run(db_publication_content, slug)
            return None if text is None else {**meta, "text": text}
        doc = await self._snapshot(slug, meta)
        if doc is None:
            return None
        files: dict[str, dict[str, str]] = doc["files"]
        if not path:
            return {**meta, "site": {"files": doc["listing"], "skipped": doc.get("skipped", [])}}
        f = files.get(path)
        if f is None:
            return None
        return {**meta, "path": path, "site_path": meta["path"], **f}
