"""Workspaces: DB rows, placement on workers, saves as incremental git bundles, sharing, publishing.

Durability rule: a save is acknowledged only after the bundle's row is COMMITted. The DB holds the
bundle chain (``seq`` 0.. with ``parent_seq``; a base bundle has ``parent_seq`` NULL and starts a new
chain); opening a workspace on a worker that does not have its newest commit restores it from the
newest chain. A dead worker's workspaces therefore reopen elsewhere from their last save.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import logging
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sagews.backend.cache import Cache
from sagews.backend.docs import SharedDocs
from sagews.backend.events import notify_in
from sagews.backend.metrics import Metrics
from sagews.backend.terminals import Terminals
from sagews.backend.workers import FrameCallback, WorkerLink, WorkerPool, WorkerUnavailable
from sagews.db import Database
from sagews.db.models import (
    Account,
    Collaborator,
    Publication,
    Role,
    Worker,
    WorkerState,
    Workspace,
    WorkspaceBundle,
)
from sagews.db.types import utcnow

log = logging.getLogger("sagews.backend.workspaces")
NAME_MAX = 200
WRITE_OPS = frozenset(
    {"write", "rename", "delete", "save", "exec", "interrupt", "restart", "term_input", "doc_update"}
)


class WorkspaceError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > NAME_MAX:
        raise WorkspaceError("bad_field", f"A workspace name is 1-{NAME_MAX} characters")
    return name.strip()


def check_id(ws_id: object) -> str:
    if not isinstance(ws_id, str) or len(ws_id) > 36:
        raise WorkspaceError("not_found", "No such workspace", 404)
    try:
        return str(uuid.UUID(ws_id))
    except ValueError:
        raise WorkspaceError("not_found", "No such workspace", 404) from None


# --- DB functions ----------------------------------------------------------------------------------


def _ws(s: Session, ws_id: str) -> Workspace:
    w = s.get(Workspace, ws_id)
    if w is None or w.deleted:
        raise WorkspaceError("not_found", "No such workspace", 404)
    return w


def db_create(s: Session, owner_id: int, name: str, ws_id: str | None = None) -> dict[str, Any]:
    w = Workspace(id=ws_id or str(uuid.uuid4()), name=name, owner_id=owner_id, last_activity=utcnow())
    s.add(w)
    s.add(Collaborator(workspace_id=w.id, account_id=owner_id, role=Role.owner))
    s.flush()
    return {"id": w.id, "name": w.name}


def db_meta(s: Session, ws_id: str) -> dict[str, Any]:
    w = _ws(s, ws_id)
    owner = s.get(Account, w.owner_id)
    members = {
        str(c.account_id): str(c.role)
        for c in s.scalars(select(Collaborator).where(Collaborator.workspace_id == ws_id))
    }
    members[str(w.owner_id)] = "owner"
    return {
        "id": w.id,
        "name": w.name,
        "owner_id": w.owner_id,
        "owner": owner.name if owner else "?",
        "members": members,
        "worker_id": w.worker_id,
        "head_commit": w.head_commit,
        "last_activity": w.last_activity.timestamp() if w.last_activity else None,
    }


def db_list(s: Session, account_id: int) -> list[dict[str, Any]]:
    rows = s.execute(
        select(Workspace, Collaborator.role, Account.name)
        .join(Collaborator, Collaborator.workspace_id == Workspace.id)
        .join(Account, Account.id == Workspace.owner_id)
        .where(Collaborator.account_id == account_id, Workspace.deleted.is_(False))
        .order_by(Workspace.last_activity.desc())
    ).all()
    return [
        {
            "id": w.id,
            "name": w.name,
            "owner": owner,
            "role": "owner" if w.owner_id == account_id else str(role),
            "last_activity": w.last_activity.timestamp() if w.last_activity else None,
        }
        for w, role, owner in rows
    ]


def db_list_all(s: Session) -> list[dict[str, Any]]:
    rows = s.execute(
        select(Workspace, Account.name)
        .join(Account, Account.id == Workspace.owner_id)
        .where(Workspace.deleted.is_(False))
        .order_by(Workspace.created)
    ).all()
    return [
        {"id": w.id, "name": w.name, "owner": owner, "worker_id": w.worker_id, "head": w.head_commit}
        for w, owner in rows
    ]


def db_rename(s: Session, ws_id: str, name: str) -> None:
    w = _ws(s, ws_id)
    w.name = name
    w.updated = utcnow()


def db_delete(s: Session, ws_id: str, origin: str | None = None) -> None:
    w = _ws(s, ws_id)
    w.deleted = True
    w.worker_id = None
    w.updated = w.deleted_at = utcnow()
    notify_in(s, {"kind": "acl", "ws": ws_id, "from": origin})


def db_purge(s: Session, before: dt.datetime, batch: int = 20) -> int:
    """Remove up to ``batch`` workspaces deleted before ``before``: their bundles, publications,
    members and row (one transaction per batch, so no single transaction grows with the backlog)."""
    ids = list(
        s.scalars(
            select(Workspace.id)
            .where(Workspace.deleted.is_(True), Workspace.deleted_at < before)
            .order_by(Workspace.deleted_at)
            .limit(batch)
        )
    )
    if ids:
        for model in (WorkspaceBundle, Publication, Collaborator):
            s.execute(delete(model).where(model.workspace_id.in_(ids)))
        s.execute(delete(Workspace).where(Workspace.id.in_(ids)))
    return len(ids)


# --- fairness caps (docs/security.md) ----------------------------------------------------------------


def _limits(s: Session, account_id: int, lock: bool = False) -> Account:
    a = s.get(Account, account_id, with_for_update=lock)  # the lock serialises one owner's placements
    if a is None:
        raise WorkspaceError("not_found", "No such account", 404)
    return a


def db_open_count(s: Session, owner_id: int, exclude: str | None = None) -> int:
    """Workspaces of ``owner_id`` placed on a worker that is not down."""
    q = (
        select(func.count())
        .select_from(Workspace)
        .join(Worker, Worker.id == Workspace.worker_id)
        .where(Workspace.owner_id == owner_id, Workspace.deleted.is_(False), Worker.state != WorkerState.down)
    )
    if exclude is not None:
        q = q.where(Workspace.id != exclude)
    return int(s.scalar(q) or 0)


def db_stored_bytes(s: Session, owner_id: int) -> int:
    return int(
        s.scalar(
            select(func.coalesce(func.sum(WorkspaceBundle.size), 0))
            .join(Workspace, Workspace.id == WorkspaceBundle.workspace_id)
            .where(Workspace.owner_id == owner_id, Workspace.deleted.is_(False))
        )
        or 0
    )


def db_usage(s: Session, owner_id: int, default_open: int, default_stored: int) -> dict[str, Any]:
    a = _limits(s, owner_id)
    return {
        "limits": {
            "open_workspaces": a.max_open_workspaces if a.max_open_workspaces is not None else default_open,
            "stored_bytes": a.max_stored_bytes if a.max_stored_bytes is not None else default_stored,
            "open_workspaces_default": a.max_open_workspaces is None,
            "stored_bytes_default": a.max_stored_bytes is None,
        },
        "usage": {
            "open_workspaces": db_open_count(s, owner_id),
            "stored_bytes": db_stored_bytes(s, owner_id),
        },
    }


def db_set_limits(s: Session, name: str, changes: dict[str, int | None]) -> int:
    """``changes``: ``max_open_workspaces`` / ``max_stored_bytes`` -> value (None: back to the default)."""
    a = s.scalar(select(Account).where(Account.email == name.lower()))
    if a is None:
        raise WorkspaceError("no_user", f"No user called {name}", 404)
    for key, value in changes.items():
        if key not in ("max_open_workspaces", "max_stored_bytes"):
            raise WorkspaceError("bad_field", f"unknown limit {key}")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise WorkspaceError("bad_field", f"{key} must be a non-negative integer or null")
        setattr(a, key, value)
    return a.id


def check_open_cap(s: Session, owner_id: int, ws_id: str, default: int) -> None:
    a = _limits(s, owner_id, lock=True)
    limit = a.max_open_workspaces if a.max_open_workspaces is not None else default
    if limit and db_open_count(s, owner_id, exclude=ws_id) >= limit:
        raise WorkspaceError(
            "too_many_open",
            f"The owner of this workspace has {limit} workspaces open (the limit); close one first",
            429,
        )


def check_storage(s: Session, owner_id: int, default: int, adding: int = 0) -> None:
    a = _limits(s, owner_id, lock=True)
    limit = a.max_stored_bytes if a.max_stored_bytes is not None else default
    if limit and db_stored_bytes(s, owner_id) + adding >= limit:
        raise WorkspaceError(
            "storage_quota",
            f"The owner's workspaces use their whole storage allowance ({limit >> 20} MB); "
            "delete or shrink workspaces, or ask an administrator",
            507,
        )


def db_check_save(s: Session, ws_id: str, default: int) -> None:
    check_storage(s, _ws(s, ws_id).owner_id, default)


def db_members(s: Session, ws_id: str) -> list[dict[str, str]]:
    rows = s.execute(
        select(Account.name, Collaborator.role)
        .join(Collaborator, Collaborator.account_id == Account.id)
        .where(Collaborator.workspace_id == ws_id)
        .order_by(Account.name)
    ).all()
    return [{"name": n, "role": str(r)} for n, r in rows]


def db_share(s: Session, ws_id: str, username: str, role: str, origin: str | None = None) -> None:
    w = _ws(s, ws_id)
    acc = s.scalar(select(Account).where(Account.email == username.lower()))
    if acc is None:
        raise WorkspaceError("no_user", f"No user called {username}", 404)
    if acc.id == w.owner_id:
        raise WorkspaceError("bad_field", "The owner's role cannot be changed")
    c = s.get(Collaborator, (ws_id, acc.id))
    if role == "none":
        if c is not None:
            s.delete(c)
    elif c is None:
        s.add(Collaborator(workspace_id=ws_id, account_id=acc.id, role=Role(role)))
    else:
        c.role = Role(role)
    notify_in(s, {"kind": "acl", "ws": ws_id, "from": origin})  # live connections re-read their roles


def db_store_bundle(s: Session, ws_id: str, data: bytes, base: bool, commit: str) -> int:
    """Append one bundle to the workspace's chain; returns its seq. Raises IntegrityError on a race."""
    w = _ws(s, ws_id)
    last = s.scalar(select(func.max(WorkspaceBundle.seq)).where(WorkspaceBundle.workspace_id == ws_id))
    seq = 0 if last is None else last + 1
    s.add(
        WorkspaceBundle(
            workspace_id=ws_id,
            seq=seq,
            parent_seq=None if base or last is None else last,
            data=data,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            commit=commit,
        )
    )
    w.head_commit = commit
    w.updated = w.last_activity = utcnow()
    s.flush()
    return seq


def db_chain(s: Session, ws_id: str) -> list[bytes]:
    """The newest chain: the last base bundle (parent_seq NULL) and every bundle after it, in order."""
    base = s.scalar(
        select(func.max(WorkspaceBundle.seq)).where(
            WorkspaceBundle.workspace_id == ws_id, WorkspaceBundle.parent_seq.is_(None)
        )
    )
    if base is None:
        return []
    rows = s.scalars(
        select(WorkspaceBundle)
        .where(WorkspaceBundle.workspace_id == ws_id, WorkspaceBundle.seq >= base)
        .order_by(WorkspaceBundle.seq)
    ).all()
    out = []
    for b in rows:
        if hashlib.sha256(b.data).hexdigest() != b.sha256:
            raise WorkspaceError("corrupt", f"bundle {b.seq} of workspace {ws_id} fails its checksum", 500)
        out.append(b.data)
    return out


def db_bundle_count(s: Session, ws_id: str) -> int:
    return int(
        s.scalar(
            select(func.count()).select_from(WorkspaceBundle).where(WorkspaceBundle.workspace_id == ws_id)
        )
        or 0
    )


def db_repack(s: Session, ws_id: str, data: bytes, upto: int, commit: str) -> bool:
    """Replace bundles ``<= upto`` by one base bundle at ``upto + 1``; False if someone appended meanwhile."""
    last = s.scalar(select(func.max(WorkspaceBundle.seq)).where(WorkspaceBundle.workspace_id == ws_id))
    if last != upto:
        return False
    s.add(
        WorkspaceBundle(
            workspace_id=ws_id,
            seq=upto + 1,
            parent_seq=None,
            data=data,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            commit=commit,
        )
    )
    s.flush()  # the unique (workspace_id, seq) stops a concurrent append before anything is deleted
    s.execute(
        WorkspaceBundle.__table__.delete().where(
            WorkspaceBundle.workspace_id == ws_id, WorkspaceBundle.seq <= upto
        )
    )
    return True


def db_chain_length(s: Session, ws_id: str) -> tuple[int, int | None]:
    """(bundles in the newest chain, newest seq)."""
    base = s.scalar(
        select(func.max(WorkspaceBundle.seq)).where(
            WorkspaceBundle.workspace_id == ws_id, WorkspaceBundle.parent_seq.is_(None)
        )
    )
    last = s.scalar(select(func.max(WorkspaceBundle.seq)).where(WorkspaceBundle.workspace_id == ws_id))
    if base is None or last is None:
        return 0, last
    return last - base + 1, last


def db_copy(s: Session, ws_id: str, owner_id: int, name: str, max_stored: int = 0) -> dict[str, Any]:
    src = _ws(s, ws_id)
    size = int(
        s.scalar(
            select(func.coalesce(func.sum(WorkspaceBundle.size), 0)).where(
                WorkspaceBundle.workspace_id == ws_id
            )
        )
        or 0
    )
    check_storage(s, owner_id, max_stored, adding=size)
    new = db_create(s, owner_id, name)
    for b in s.scalars(
        select(WorkspaceBundle).where(WorkspaceBundle.workspace_id == ws_id).order_by(WorkspaceBundle.seq)
    ):
        s.add(
            WorkspaceBundle(
                workspace_id=new["id"],
                seq=b.seq,
                parent_seq=b.parent_seq,
                data=b.data,
                sha256=b.sha256,
                size=b.size,
                commit=b.commit,
            )
        )
    w = s.get(Workspace, new["id"])
    if w is not None:
        w.head_commit = src.head_commit
    return new


def db_place(s: Session, ws_id: str, worker_id: int | None) -> None:
    w = s.get(Workspace, ws_id)
    if w is not None:
        w.worker_id = worker_id
        w.last_activity = utcnow()


def db_claim(s: Session, ws_id: str, expected: int | None, worker_id: int, max_open: int = 0) -> int | None:
    """Place the workspace on ``worker_id`` only if it is still where we saw it; returns the placement.
    A new placement (from closed) counts against the owner's cap on open workspaces."""
    w = s.get(Workspace, ws_id, with_for_update=True)
    if w is None:
        return None
    if w.worker_id == expected:
        if expected is None:
            check_open_cap(s, w.owner_id, ws_id, max_open)
        w.worker_id = worker_id
        w.last_activity = utcnow()
    return w.worker_id


def db_publish(s: Session, ws_id: str, path: str, text: str) -> str:
    _ws(s, ws_id)
    p = s.scalar(select(Publication).where(Publication.workspace_id == ws_id, Publication.path == path))
    if p is None:
        p = Publication(workspace_id=ws_id, path=path, slug=secrets.token_urlsafe(12), html=text)
        s.add(p)
    else:
        p.html = text
        p.updated = utcnow()
    s.flush()
    return p.slug


def db_unpublish(s: Session, ws_id: str, path: str) -> None:
    p = s.scalar(select(Publication).where(Publication.workspace_id == ws_id, Publication.path == path))
    if p is not None:
        s.delete(p)


def db_published(s: Session, ws_id: str) -> list[dict[str, Any]]:
    return [
        {"path": p.path, "url": f"/pub/{p.slug}", "updated": p.updated.timestamp()}
        for p in s.scalars(select(Publication).where(Publication.workspace_id == ws_id))
    ]


def db_publication(s: Session, slug: str) -> dict[str, Any] | None:
    row = s.execute(
        select(Publication, Workspace.name)
        .join(Workspace, Workspace.id == Publication.workspace_id)
        .where(Publication.slug == slug, Workspace.deleted.is_(False))
    ).first()
    if row is None:
        return None
    p, name = row
    return {"path": p.path, "workspace": name, "text": p.html, "published": p.updated.timestamp()}


# --- the live side ---------------------------------------------------------------------------------


@dataclass
class OpenWorkspace:
    id: str
    link: WorkerLink
    session: str
    owner_id: int = 0
    running: int = 0
    dirty: bool = False
    last_activity: float = field(default_factory=time.monotonic)


SlugRe = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Workspaces:
    def __init__(self, db: Database, cache: Cache, pool: WorkerPool, metrics: Metrics) -> None:
        self.db = db
        self.cache = cache
        self.pool = pool
        self.metrics = metrics
        self.open: dict[str, OpenWorkspace] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.save_locks: dict[str, asyncio.Lock] = {}
        self.on_closed: Callable[[str, str], None] | None = None
        self.presence: dict[str, set[Any]] = {}  # workspace id -> live connections of this backend
        self.repack_after = 12  # bundles in a chain before it is replaced by one base bundle
        self.max_open = 0  # default cap on an owner's open workspaces (0: none); accounts may override
        self.max_stored = 0  # default cap on an owner's stored bundle bytes
        self.coalesced: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}
        self.bus_id: str | None = None  # this backend's EventBus id (its own NOTIFYs are skipped)
        self.on_acl: Callable[[str], Awaitable[None]] | None = None
        self.terminals = Terminals(self)  # this backend's clients attached to workspace terminals
        self.docs = SharedDocs(self)  # this backend's clients following shared text documents
        pool.on_down = self._worker_down
        pool.on_unsolicited = self._unsolicited

    # metadata (cached) ---------------------------------------------------------------------------
    async def meta(self, ws_id: str) -> dict[str, Any]:
        ws_id = check_id(ws_id)
        cached = await self.cache.get(f"ws:{ws_id}")
        if isinstance(cached, dict):
            return cached
        m = await self.db.run(db_meta, ws_id)
        await self.cache.set(f"ws:{ws_id}", m)
        return m

    async def invalidate(self, ws_id: str) -> None:
        await self.cache.delete(f"ws:{ws_id}")

    async def role(self, ws_id: str, account_id: int) -> str:
        """The account's role, or WorkspaceError not_found (strangers learn nothing)."""
        m = await self.meta(ws_id)
        role = m["members"].get(str(account_id))
        if role is None:
            raise WorkspaceError("not_found", "No such workspace", 404)
        return str(role)

    async def require(self, ws_id: str, account_id: int, roles: tuple[str, ...]) -> str:
        role = await self.role(ws_id, account_id)
        if role not in roles:
            raise WorkspaceError("forbidden", f"You are a {role} of this workspace: not allowed", 403)
        return role

    async def write(self, fn: Callable[..., Any], ws_id: str, *args: Any) -> Any:
        """A DB write about one workspace, then the cache entry is dropped."""
        try:
            return await self.db.run(fn, ws_id, *args)
        finally:
            await self.invalidate(ws_id)

    # lifecycle -----------------------------------------------------------------------------------
    async def create(self, owner_id: int, name: str) -> dict[str, Any]:
        """A DB row; the git repository is created on a worker when the workspace is first opened."""
        return await self.db.run(db_create, owner_id, check_name(name))

    async def ensure_open(self, ws_id: str) -> OpenWorkspace:
        ow = self.open.get(ws_id)
        if ow is not None and ow.link.connected and ow.link.healthy:
            return ow
        lock = self.locks.setdefault(ws_id, asyncio.Lock())
        async with lock:
            ow = self.open.get(ws_id)
            if ow is not None and ow.link.connected and ow.link.healthy:
                return ow
            self.open.pop(ws_id, None)
            m = await self.meta(ws_id)
            tried: set[int] = set()
            for _ in range(4):
                link = self.pool.links.get(m["worker_id"]) if m["worker_id"] is not None else None
                if link is None or not link.healthy or link.draining or link.id in tried:
                    link = self.pool.pick(exclude=tried)
                if link is None and not tried:
                    # none healthy at the last heartbeat (e.g. a worker restarting): look again now
                    # instead of failing until the next one
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.pool.beat_now(), 10)
                    link = self.pool.pick(exclude=tried)
                if link is None:
                    raise WorkspaceError("no_worker", "No compute worker is available; try again soon", 503)
                tried.add(link.id)
                if m["worker_id"] != link.id:
                    # compare-and-set: if another backend placed it meanwhile, follow that placement
                    current = await self._claim(ws_id, m, link.id)
                    if current != link.id:
                        tried.discard(link.id)
                        m = await self.meta(ws_id)
                        continue
                    m = {**m, "worker_id": link.id}
                try:
                    ow = await self._open_on(link, ws_id, m["head_commit"])
                except WorkerUnavailable as exc:
                    log.warning("opening %s on worker %s failed: %s", ws_id, link.id, exc)
                    link.healthy = False
                    continue
                ow.owner_id = int(m["owner_id"])
                self.open[ws_id] = ow
                return ow
            raise WorkspaceError("no_worker", "No compute worker could open this workspace", 503)

    async def _claim(self, ws_id: str, m: dict[str, Any], worker_id: int) -> int | None:
        """db_claim; at the owner's cap, first close the owner's least recently used workspace that
        is open here with nobody in it and nothing running, then try once more."""
        try:
            return await self.write(db_claim, ws_id, m["worker_id"], worker_id, self.max_open)
        except WorkspaceError as exc:
            if exc.code != "too_many_open":
                raise
            idle = sorted(
                (ow for ow in self.open.values()
                 if ow.owner_id == m["owner_id"] and ow.running == 0 and not self.presence.get(ow.id)),
                key=lambda ow: ow.last_activity,
            )  # fmt: skip
            if not idle:
                raise
            await self.close(idle[0].id)
            return await self.write(db_claim, ws_id, m["worker_id"], worker_id, self.max_open)

    async def _open_on(self, link: WorkerLink, ws_id: str, head: str | None) -> OpenWorkspace:
        r = await link.call("open", workspace=ws_id)
        if r.get("type") != "opened":
            raise WorkspaceError(str(r.get("code", "worker")), str(r.get("message", "open failed")), 502)
        session = str(r["session"])
        if head is not None and not await self._has_head(link, session, head):
            chain = await self.db.run(db_chain, ws_id)
            if chain:
                rr = await link.call(
                    "restore", session=session, bundles=[base64.b64encode(b).decode() for b in chain]
                )
                if rr.get("type") != "restored":
                    raise WorkspaceError(str(rr.get("code")), f"restore failed: {rr.get('message')}", 502)
        return OpenWorkspace(ws_id, link, session)

    async def _has_head(self, link: WorkerLink, session: str, head: str) -> bool:
        r = await link.call("history", session=session, limit=1)
        commits = r.get("commits") or []
        return bool(r.get("type") == "history" and commits and commits[0].get("commit") == head)

    def _worker_down(self, link: WorkerLink) -> None:
        for ws_id, ow in list(self.open.items()):
            if ow.link is link:
                self.open.pop(ws_id, None)
                self.docs.forget_workspace(ws_id)
                if self.on_closed is not None:
                    self.on_closed(ws_id, "worker down")

    def _unsolicited(self, link: WorkerLink, msg: dict[str, Any]) -> None:
        if msg.get("type") == "closed":
            for ws_id, ow in list(self.open.items()):
                if ow.link is link and ow.session == msg.get("session"):
                    self.open.pop(ws_id, None)
                    self.docs.forget_workspace(ws_id)
        elif msg.get("type") in ("doc_update", "doc_awareness", "doc_closed"):
            ws_id = self.docs.by_session.get(str(msg.get("session")))
            ow = self.open.get(ws_id) if ws_id is not None else None
            if ow is not None and ow.link is link and ow.session == msg.get("session"):
                self.docs.on_worker_frame(ow.id, msg)
        elif msg.get("type") == "shutdown":
            self._worker_down(link)
        elif msg.get("type") in ("term_output", "term_exit"):
            ws_id = self.terminals.by_session.get(str(msg.get("session")))
            ow = self.open.get(ws_id) if ws_id is not None else None
            if ow is not None and ow.link is link and ow.session == msg.get("session"):
                self.terminals.on_worker_frame(ow.id, msg)
        elif msg.get("type") == "quota":
            for ws_id, ow in list(self.open.items()):
                if ow.link is link and ow.session == msg.get("session"):
                    note = {k: v for k, v in msg.items() if k in ("type", "used", "quota", "message")}
                    for conn in list(self.presence.get(ws_id, ())):
                        conn.send_json({**note, "session": ws_id})

    async def request(
        self, ws_id: str, kind: str, fields: dict[str, Any], on_frame: FrameCallback | None = None
    ) -> dict[str, Any]:
        """Relay one session request to the workspace's worker (opening/reopening it as needed).
        Concurrent ``restart``s (and ``interrupt``s) of one workspace are coalesced into one."""
        if kind in ("restart", "interrupt"):
            key = (ws_id, kind)
            running = self.coalesced.get(key)
            if running is not None:
                return await asyncio.shield(running)
            fut = asyncio.ensure_future(self._request(ws_id, kind, fields, on_frame))
            self.coalesced[key] = fut
            fut.add_done_callback(lambda _f: self.coalesced.pop(key, None))
            return await asyncio.shield(fut)
        return await self._request(ws_id, kind, fields, on_frame)

    async def _request(
        self, ws_id: str, kind: str, fields: dict[str, Any], on_frame: FrameCallback | None = None
    ) -> dict[str, Any]:
        for attempt in range(2):
            ow = await self.ensure_open(ws_id)
            ow.last_activity = time.monotonic()
            if kind in WRITE_OPS and kind != "save":
                ow.dirty = True
            if kind == "exec":
                ow.running += 1
            try:
                timeout = None if kind == "exec" else 120.0
                r = await ow.link.call(kind, on_frame=on_frame, timeout=timeout, session=ow.session, **fields)
            except WorkerUnavailable:
                self.open.pop(ws_id, None)
                ow.link.healthy = False
                if kind == "exec" or attempt:
                    raise WorkspaceError(
                        "worker_lost",
                        "The compute worker went away; the workspace reopens from its last save",
                    ) from None
                continue
            finally:
                if kind == "exec":
                    ow.running -= 1
            if r.get("type") == "error" and r.get("code") == "no_session" and not attempt:
                self.open.pop(ws_id, None)  # closed by the worker (idle): open again
                continue
            return r
        raise WorkspaceError("worker_lost", "The workspace could not be reopened")

    async def save(self, ws_id: str, message: str | None = None, author: str | None = None) -> dict[str, Any]:
        """Commit on the worker, store the bundle (one transaction), reply only after COMMIT."""
        lock = self.save_locks.setdefault(ws_id, asyncio.Lock())
        async with lock, self._save_lease(ws_id):
            # at the owner's storage cap no new save starts (the one that crosses it is kept: a
            # refused bundle would break the worker's chain); overshoot is at most one save
            await self.db.run(db_check_save, ws_id, self.max_stored)
            fields: dict[str, Any] = {} if message is None else {"message": message}
            if author is not None:
                fields["author"] = author  # the history shows who saved
            r = await self.request(ws_id, "save", fields)
            if r.get("type") != "saved":
                return r
            ow = self.open.get(ws_id)
            if r.get("unchanged"):
                if ow is not None:
                    ow.dirty = False
                return {"type": "saved", "commit": r["commit"], "unchanged": True}
            if r.get("bundle_omitted") or not isinstance(r.get("bundle"), str):
                raise WorkspaceError(
                    "too_large", "This save is too large to store (bundle over the frame limit)"
                )
            try:
                data = base64.b64decode(r["bundle"], validate=True)
            except binascii.Error:
                raise WorkspaceError("bad_bundle", "The worker sent an unreadable bundle", 502) from None
            for attempt in range(3):  # another backend may append concurrently: retry on the unique key
                try:
                    seq = await self.write(db_store_bundle, ws_id, data, bool(r.get("base")), r["commit"])
                    break
                except IntegrityError:
                    if attempt == 2:
                        raise
            self.metrics.saves += 1
            if ow is not None:
                ow.dirty = False
            if self.repack_after and seq >= self.repack_after:
                try:
                    await self.repack(ws_id)
                except Exception as exc:  # the save is stored; a failed repack only costs space
                    log.warning("repack of %s failed: %s", ws_id, exc)
            return {
                "type": "saved",
                "commit": r["commit"],
                "seq": seq,
                "size": len(data),
                "base": r.get("base"),
            }

    async def publish(self, ws_id: str, path: object) -> str:
        """Snapshot a text file's current content into publications; returns the slug."""
        if not isinstance(path, str) or not path or len(path) > 1024:
            raise WorkspaceError("bad_field", "path must be a file path")
        r = await self.request(ws_id, "read", {"path": path})
        if r.get("type") != "read":
            raise WorkspaceError(str(r.get("code", "io")), str(r.get("message", "cannot read the file")))
        if "text" not in r:
            raise WorkspaceError("bad_field", "Only text files can be published")
        return str(await self.db.run(db_publish, ws_id, path, r["text"]))

    async def share(self, ws_id: str, username: object, role: object) -> None:
        if role not in ("editor", "viewer", "none"):
            raise WorkspaceError("bad_field", "role must be editor, viewer or none")
        if not isinstance(username, str) or not username:
            raise WorkspaceError("bad_field", "username is required")
        await self.write(db_share, ws_id, username, role, self.bus_id)
        await self.acl_changed(ws_id)

    async def repack(self, ws_id: str) -> bool:
        """When the newest chain is longer than ``repack_after``, replace it by one base bundle
        (built with git from the chain itself), so restores and storage stay bounded."""
        from sagews.backend.export import export

        length, last = await self.db.run(db_chain_length, ws_id)
        if last is None or length <= max(1, self.repack_after):
            return False
        chain = await self.db.run(db_chain, ws_id)
        m = await self.db.run(db_meta, ws_id)
        data = await export(chain, "bundle")
        try:
            return bool(await self.write(db_repack, ws_id, data, last, m["head_commit"]))
        except IntegrityError:
            return False

    @contextlib.asynccontextmanager
    async def _save_lease(self, ws_id: str) -> AsyncIterator[None]:
        """Across backends, one save of a workspace at a time (a memcached lease, 120 s). Without
        memcached this falls back to the per-process lock only (see docs/backend.md)."""
        token = secrets.token_hex(8)
        key = f"savelease:{ws_id}"
        deadline = time.monotonic() + 130
        held = False
        while True:
            got = await self.cache.add(key, token, 120)
            if got is None:  # memcached unavailable: fail open
                break
            if got:
                held = True
                break
            if time.monotonic() > deadline:
                raise WorkspaceError("busy", "Another save of this workspace is still running", 503)
            await asyncio.sleep(0.05)
        try:
            yield
        finally:
            if held:
                await self.cache.delete(key)

    async def close(self, ws_id: str, save: bool = True) -> None:
        ow = self.open.get(ws_id)
        if ow is None:
            return
        if save and ow.dirty:
            try:
                await self.save(ws_id, "autosave before close")
            except (WorkspaceError, WorkerUnavailable) as exc:
                log.warning("save before closing %s failed: %s", ws_id, exc)
                return  # keep it open: never drop unsaved work silently
        self.open.pop(ws_id, None)
        for locks in (self.locks, self.save_locks):
            lock = locks.get(ws_id)
            if lock is not None and not lock.locked():
                del locks[ws_id]
        with contextlib.suppress(WorkerUnavailable):
            await ow.link.call("close", session=ow.session, timeout=30)
        await self.write(db_place, ws_id, None)

    async def delete(self, ws_id: str) -> None:
        await self.close(ws_id, save=False)
        await self.write(db_delete, ws_id, self.bus_id)
        await self.acl_changed(ws_id)

    async def acl_changed(self, ws_id: str) -> None:
        """Who may use ``ws_id`` changed (share, unshare, delete): live connections learn it now."""
        if self.on_acl is not None:
            await self.on_acl(ws_id)

    async def copy(self, ws_id: str, owner_id: int, name: str) -> dict[str, Any]:
        if ws_id in self.open and self.open[ws_id].dirty:
            await self.save(ws_id, "save before copy")
        return await self.db.run(db_copy, ws_id, owner_id, check_name(name), self.max_stored)

    async def housekeeping(self, idle_close: float) -> None:
        """Autosave dirty workspaces; close idle ones that nobody watches and that compute nothing."""
        now = time.monotonic()
        for ws_id, ow in list(self.open.items()):
            try:
                if ow.running == 0 and not self.presence.get(ws_id) and now - ow.last_activity > idle_close:
                    await self.close(ws_id)
                elif ow.dirty and ow.running == 0:
                    await self.save(ws_id, "autosave")
            except (WorkspaceError, WorkerUnavailable) as exc:
                log.warning("housekeeping of %s: %s", ws_id, exc)

    async def purge(self, older_than_days: float) -> int:
        """Purge workspaces deleted more than ``older_than_days`` ago (in batches); returns how many."""
        before = utcnow() - dt.timedelta(days=older_than_days)
        total = 0
        while True:
            n = await self.db.run(db_purge, before)
            total += n
            if n == 0:
                break
        if total:
            log.info("purged %d deleted workspace(s)", total)
        return total

    async def run_purge(self, older_than_days: float, interval: float = 3600.0) -> None:
        while True:
            try:
                await self.purge(older_than_days)
            except Exception:
                log.exception("purge of deleted workspaces failed")
            await asyncio.sleep(interval)

    async def move_off_draining(self) -> int:
        """Workspaces open on a worker an operator is draining (``sagews admin drain-worker``): save and
        close each one that computes nothing (on any backend: the worker's status says), so its next
        request reopens it on another worker from that save. Returns how many were moved."""
        moved = 0
        for ws_id, ow in list(self.open.items()):
            link = ow.link
            if not link.draining or ow.running:
                continue
            busy = {
                str(e.get("session"))
                for e in link.status.get("session_list", [])
                if isinstance(e, dict) and e.get("running")
            }
            if ow.session in busy:
                continue
            try:
                await self.close(ws_id)
                moved += 1
            except (WorkspaceError, WorkerUnavailable) as exc:
                log.warning("moving %s off draining worker %s: %s", ws_id, link.id, exc)
        return moved

    async def run_housekeeping(self, interval: float, idle_close: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.housekeeping(idle_close)
            except Exception:
                log.exception("housekeeping failed")
