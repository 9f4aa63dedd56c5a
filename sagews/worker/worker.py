"""The worker: sessions by workspace, the warm pool, the user pool, saves and restores, status, shutdown."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from sagews import __version__
from sagews.tls import server_context
from sagews.worker import isolation
from sagews.worker.cgroup import Cgroups, delegated_root
from sagews.worker.config import WorkerConfig
from sagews.worker.connection import Connection
from sagews.worker.forker import Forker
from sagews.worker.limiter import FairLimiter
from sagews.worker.protocol import CHUNK, COMMIT_ID, MAX_QUEUED_OPS, PROTOCOL_VERSIONS, ProtocolError
from sagews.worker.session import Session
from sagews.worker.users import WORKSPACE_ID, PoolExhausted, UserPool
from sagews.worker.volumes import VolumeError, Volumes
from sagews.worker.workspace import AUTHOR_RE, HELPER_LIMITS, prepare_dir, private_tmp
from sagews.worker.zygote_client import EngineProc, Zygote

log = logging.getLogger("sagews.worker")


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.zygote = Zygote(config.engines, on_death=self._zygote_died, isolate=config.isolation)
        self.pool: list[EngineProc] = []
        self.refilling = False
        self.sessions: dict[str, Session] = {}
        self.by_workspace: dict[str, Session] = {}
        self.opening: dict[str, asyncio.Future[Session]] = {}
        self.opening_owners: dict[str, str] = {}
        self.connections: set[Connection] = set()
        self.server: asyncio.Server | None = None
        self.stopping = False
        self.started = time.time()
        self.workspaces = Path(config.workspaces_dir)
        self.state = Path(config.state_dir)
        self.tmp = Path(config.tmp_dir)
        self.users: UserPool | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.cgroups: Cgroups | None = None
        self.isolated = config.isolation  # engines and helpers in their own PID/mount/IPC namespaces
        self.forker = Forker()  # forks the file/git helpers (the worker itself never forks for them)
        self.volumes: Volumes | None = None  # a filesystem per workspace (disk_quota = image)
        self.disk_quota_mode = "measured"
        # helper forks (file/git operations) running at once, shared round robin between sessions
        slots = config.helper_processes or max(4, 2 * (os.cpu_count() or 1))
        self.helpers = FairLimiter(slots, MAX_QUEUED_OPS)
        if config.cgroup:
            root = delegated_root() if config.cgroup_root == "auto" else config.cgroup_root
            self.cgroups = Cgroups(
                root, config.cgroup_memory_mb, config.limits.processes, config.cgroup_cpu_weight
            )

    # setup ---------------------------------------------------------------------------------------
    def _prepare_dirs(self) -> None:
        for path, mode in ((self.workspaces, 0o711), (self.state, 0o700), (self.tmp, 0o711)):
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, 0, 0)
            os.chmod(path, mode)
        (self.state / "bundles").mkdir(mode=0o700, exist_ok=True)
        for parent in [self.workspaces.resolve(), *self.workspaces.resolve().parents]:
            if not parent.stat().st_mode & 0o001:
                raise RuntimeError(
                    f"{parent} is not traversable (o+x) for workspace users: {self.workspaces}"
                )
        key = Path(self.config.key)
        st = key.stat()
        if st.st_mode & 0o077 or st.st_uid != 0:
            os.chown(key, 0, 0)
            os.chmod(key, 0o600)
        if self.cgroups is not None:
            self.cgroups.setup()
        if self.isolated:
            isolation.check_paths(str(self.workspaces), str(self.tmp))
            why = isolation.probe()
            if why is not None:
                raise RuntimeError(
                    f"isolation = true, but this worker cannot create PID/mount/IPC namespaces ({why}); "
                    "it needs root with CAP_SYS_ADMIN (set isolation = false to run without: "
                    "see docs/security.md for what that gives up)"
                )
        lim = self.config.limits
        HELPER_LIMITS.update(
            processes=lim.processes,
            address_space=lim.address_space_mb << 20,
            cpu=max(1, int(lim.cpu_seconds)),
            open_files=lim.open_files,
        )
        self.users = UserPool(
            self.state, self.config.user_prefix, self.config.user_pool_size, self.config.uid_base
        )
        self.users.check_range()

    async def start(self) -> int:
        self._prepare_dirs()
        await self._setup_volumes()
        ctx = server_context(self.config.cert, self.config.key, self.config.ca)
        await self.forker.start()
        await self.zygote.start()
        self.refill()
        self.server = await asyncio.start_server(
            self._on_client,
            self.config.host,
            self.config.port,
            ssl=ctx,
            limit=CHUNK,
            ssl_handshake_timeout=10,
        )
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _setup_volumes(self) -> None:
        mode = self.config.disk_quota
        if mode not in {"auto", "image", "measured"}:
            raise RuntimeError("disk_quota must be 'auto', 'image' or 'measured'")
        if mode == "measured":
            return
        vols = Volumes(
            self.workspaces, self.state, self.config.limits.disk_quota_mb, self.config.limits.disk_inodes
        )
        why = await vols.probe()
        if why is not None:
            if mode == "image":
                raise RuntimeError(f"disk_quota = 'image', but workspace images cannot be mounted: {why}")
            log.warning(
                "disk quotas are measured, not enforced: workspace images cannot be mounted (%s)", why
            )
            return
        await vols.share()
        self.volumes = vols
        self.disk_quota_mode = "image"

    def _zygote_died(self) -> None:
        """The zygote is gone (its engines die with it: parent-death signal). Start a new one."""
        if self.stopping:
            return
        log.error("the zygote died: restarting it; open sessions must be restarted")
        for proc in self.pool:
            with contextlib.suppress(OSError):
                os.close(proc.out_fd)
                os.close(proc.err_fd)
            proc.writer.close()
        self.pool.clear()
        old = self.zygote
        if old.proc is not None:
            old.proc.wait()  # reap it (it is dead)
            old.proc = None
        old.stop()
        self.zygote = Zygote(self.config.engines, on_death=self._zygote_died, isolate=self.config.isolation)
        self.spawn_task(self._start_zygote())

    async def _start_zygote(self) -> None:
        await self.zygote.start()
        self.refill()

    def spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @property
    def engines(self) -> list[str]:
        return self.zygote.available

    def refill(self) -> None:
        if self.refilling or self.stopping:
            return
        self.refilling = True
        asyncio.get_running_loop().create_task(self._refill())

    async def _refill(self) -> None:
        try:
            while len(self.pool) < self.config.warm_pool and not self.stopping:
                self.pool.append(await self.zygote.spawn())
        except Exception:
            log.exception("could not refill the warm pool")
        finally:
            self.refilling = False

    async def take_engine(self) -> EngineProc:
        while self.pool and self.pool[0].exited.done():  # known dead: drop without trying
            dead = self.pool.pop(0)
            with contextlib.suppress(OSError):
                os.close(dead.out_fd)
                os.close(dead.err_fd)
            dead.writer.close()
        if not self.pool:
            await asyncio.wait_for(self.zygote.started.wait(), 120)  # a restarting zygote
        proc = self.pool.pop(0) if self.pool else await self.zygote.spawn()
        self.refill()
        return proc

    # sessions ------------------------------------------------------------------------------------
    def _check_owner(self, owner: str) -> None:
        """An owner (the backend's account) may hold ``owner_sessions`` sessions, and only one while
        the pool is down to its last ``owner_reserve`` free users: no flood takes the last uids."""
        if not owner:
            return
        held = sum(1 for s in self.sessions.values() if s.owner == owner) + sum(
            1 for o in self.opening_owners.values() if o == owner
        )
        cap = self.config.owner_sessions
        if cap and held >= cap:
            raise ProtocolError("no_capacity", f"this owner has {held} open workspaces here (limit {cap})")
        if held and self.users is not None:
            free = self.users.free(set(self.by_workspace) | set(self.opening)) - len(self.opening)
            if free <= self.config.owner_reserve:
                raise ProtocolError(
                    "no_capacity",
                    f"only {max(free, 0)} workspace users are left: kept for owners without a workspace here",
                )

    async def open_session(
        self, workspace: object, engine: object, owner: object = None
    ) -> tuple[Session, bool]:
        if not isinstance(workspace, str) or not WORKSPACE_ID.match(workspace):
            raise ProtocolError("bad_field", "workspace must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
        if owner is not None and (not isinstance(owner, str) or len(owner) > 128):
            raise ProtocolError("bad_field", "owner must be a string of at most 128 characters")
        owner = owner or ""
        engine = self.config.default_engine if engine is None else engine
        self.check_engine(engine)
        existing = self.by_workspace.get(workspace)
        if existing is not None:
            return existing, True
        pending = self.opening.get(workspace)
        if pending is not None:
            return await asyncio.shield(pending), True
        self._check_owner(owner)
        fut: asyncio.Future[Session] = asyncio.get_running_loop().create_future()
        self.opening[workspace] = fut
        self.opening_owners[workspace] = owner
        try:
            if self.users is None:
                raise RuntimeError("the worker is not started")
            root = self.workspaces / workspace
            busy = set(self.by_workspace)
            try:
                account = await self.users.account_for(workspace, root, busy)
            except PoolExhausted as exc:
                raise ProtocolError("no_capacity", str(exc)) from None
            tmp_base = self.tmp
            if self.volumes is not None:
                try:
                    tmp_base = await self.volumes.attach(workspace, root)
                except (VolumeError, OSError) as exc:
                    raise ProtocolError(
                        "io", f"the workspace's filesystem could not be mounted: {exc}"
                    ) from None
            await asyncio.to_thread(prepare_dir, root, account)
            tmp = await asyncio.to_thread(private_tmp, tmp_base, account)
            session = Session(self, workspace, account, root, tmp, engine=str(engine))
            session.owner = owner
            await session.start_engine()
            self.sessions[session.id] = session
            self.by_workspace[workspace] = session
            session.touch()
            log.info(
                "session %s opened: workspace %s as %s (%s)", session.id, workspace, account.name, engine
            )
            fut.set_result(session)
            return session, False
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved
            raise
        finally:
            self.opening.pop(workspace, None)
            self.opening_owners.pop(workspace, None)

    def check_engine(self, engine: object) -> None:
        if not isinstance(engine, str) or engine not in {"python", "sage"}:
            raise ProtocolError("bad_field", "engine must be 'python' or 'sage'")
        if engine not in self.engines:
            if engine == "sage" and "sage" in self.config.engines:
                raise ProtocolError(
                    "engine_unavailable", "Sage is not installed on this worker (install sagews[sage])"
                )
            raise ProtocolError("engine_unavailable", f"engine {engine} is disabled on this worker")

    def session(self, sid: object) -> Session:
        if not isinstance(sid, str):
            raise ProtocolError("bad_field", "session must be a session id string")
        s = self.sessions.get(sid)
        if s is None:
            raise ProtocolError("no_session", f"no such session: {sid[:80]}")
        s.touch()
        return s

    def forget(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        if self.by_workspace.get(session.workspace) is session:
            del self.by_workspace[session.workspace]

    async def close_session(self, session: Session, reason: str) -> None:
        if session.closed:
            return
        session.closed = True
        self.forget(session)
        log.info("session %s closed: workspace %s (%s)", session.id, session.workspace, reason)
        await session.close()
        if session.last is not None and reason == "idle timeout":  # sent once its processes are gone
            session.last.conn.send({"type": "closed", "session": session.id, "reason": reason})

    # workspace saves -----------------------------------------------------------------------------
    def _bundle_dir(self, workspace: str) -> Path:
        """The workspace's stored bundle chain (blocking: call it in an executor)."""
        path = self.state / "bundles" / workspace
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    def _last_saved(self, workspace: str) -> str | None:
        marker = self._bundle_dir(workspace) / "saved"
        return marker.read_text().strip() if marker.exists() else None

    def _store_bundle(self, workspace: str, data: bytes, base: bool, commit: str) -> int:
        """Append a bundle to the chain (a base bundle starts a new chain); returns its sequence number."""
        bdir = self._bundle_dir(workspace)
        if base:
            for old in bdir.glob("*.bundle"):
                old.unlink()
        seq = len(list(bdir.glob("*.bundle")))
        (bdir / f"{seq:06d}.bundle").write_bytes(data)
        (bdir / "saved").write_text(commit)
        return seq

    def _stored_bundles(self, workspace: str) -> list[str]:
        files = sorted(self._bundle_dir(workspace).glob("*.bundle"))
        return [base64.b64encode(f.read_bytes()).decode() for f in files]

    def _mark_saved(self, workspace: str, commit: str) -> None:
        (self._bundle_dir(workspace) / "saved").write_text(commit)

    async def save(self, session: Session, message: object, author: str | None = None) -> dict[str, Any]:
        async with session.git_lock:
            await session.settled()  # a failed restore's checkout must not be saved over the workspace
            await session.docs.flush_all()  # the shared documents' text is what gets committed
            editors = list(session.docs.editors)
            res = await self._save(session, message, author, editors)
            session.docs.editors = {e: None for e in session.docs.editors if e not in editors}
            return res

    async def _save(
        self, session: Session, message: object, author: str | None = None, editors: list[str] | None = None
    ) -> dict[str, Any]:
        if session.over_quota:
            raise ProtocolError("quota", "disk quota exceeded: delete files before saving")
        last = await asyncio.to_thread(self._last_saved, session.workspace)
        # who edited the shared documents since the last save: the saver is the author (an autosave
        # or checkpoint: the first of them), the others get Co-authored-by trailers
        editors = editors or []
        if not isinstance(author, str) or not AUTHOR_RE.match(author):
            author = editors[0] if editors else author
        coauthors = [e for e in editors if e != author]
        res = await session.op(
            "save", {"message": message, "last": last, "author": author, "coauthors": coauthors}
        )
        # the helper ran as the workspace user: check what we are going to store as root
        if not isinstance(res.get("commit"), str) or not COMMIT_ID.match(res["commit"]):
            raise ProtocolError("git", "save produced no valid commit id")
        reply: dict[str, Any] = {"commit": res["commit"], "bundle": None, "base": False, "size": 0}
        if res["bundle"] is None:
            reply["unchanged"] = True
            return reply
        data = base64.b64decode(res["bundle"])
        seq = await asyncio.to_thread(
            self._store_bundle, session.workspace, data, bool(res["base"]), res["commit"]
        )
        reply.update(base=res["base"], size=len(data), seq=seq)
        if len(res["bundle"]) < self.config.max_frame - 4096:
            reply["bundle"] = res["bundle"]
        else:
            reply["bundle_omitted"] = True
        return reply

    async def restore(self, session: Session, bundles: object) -> dict[str, Any]:
        """Restore the workspace from bundles. The reply comes once the objects are indexed in a
        staging repository; its files are then checked out in the background (on a cold worker
        that is most of a restore: creating every file). Meanwhile ``ls`` and ``read`` are answered
        from the staged commit and executions, writes, saves and history wait (session.lock and
        git_lock stay held until the checkout is swapped in and the engine is started)."""
        await session.settled()
        await session.git_lock.acquire()
        try:
            await session.lock.acquire()
        except BaseException:
            session.git_lock.release()
            raise
        try:
            res = await self._restore_objects(session, bundles)
        except BaseException:
            session.lock.release()
            session.git_lock.release()
            raise
        session.staged = {"commit": res["commit"], "time": res.get("time", 0)}
        task = asyncio.get_running_loop().create_task(self._finish_restore(session, res["commit"]))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        session.checkout = task
        return {"commit": res["commit"], "checkout": "background"}

    async def _restore_objects(self, session: Session, bundles: object) -> dict[str, Any]:
        if bundles is None:
            bundles = await asyncio.to_thread(self._stored_bundles, session.workspace)
            if not bundles:
                raise ProtocolError("not_found", "no saved bundles for this workspace on this worker")
        await session.stop_engine("restoring")
        try:
            res = await session.op("restore", {"bundles": bundles, "phase": "objects"})
            if not isinstance(res.get("commit"), str) or not COMMIT_ID.match(res["commit"]):
                raise ProtocolError("git", "restore produced no valid commit id")
        except BaseException:
            await session.start_engine()
            raise
        return res

    async def _finish_restore(self, session: Session, commit: str) -> None:
        """Background half of a restore; releases the locks taken by ``restore``."""
        try:
            res = await session.op("restore", {"phase": "checkout"})
            if res.get("commit") != commit:
                raise ProtocolError("git", "the checked out commit is not the restored one")
            session.staged = None  # new ls/read wait for the swap; those in flight finish first
            await session.no_staged_readers.wait()
            await session.op("restore", {"phase": "swap"})
            await asyncio.to_thread(self._mark_saved, session.workspace, commit)
        except Exception as exc:
            # the workspace keeps its old files (the swap happens last); saving them now could store
            # an empty or stale tree as the workspace's newest version, so the session refuses work
            session.restore_error = f"the restored files could not be checked out: {exc}"
            log.error("restore of %s failed in its checkout: %s", session.workspace, exc)
        finally:
            session.staged = None
            try:
                if not session.closed:
                    await session.start_engine()
            finally:
                session.lock.release()
                session.git_lock.release()

    # status and shutdown -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        mem: dict[str, int] = {}
        with open("/proc/meminfo") as fh:
            for line in fh:
                k, v = line.split(":", 1)
                if k in {"MemTotal", "MemAvailable"}:
                    mem[k] = int(v.split()[0]) * 1024
        pressure = None
        now = time.monotonic()
        with contextlib.suppress(OSError), open("/proc/pressure/cpu") as fh:
            pressure = fh.readline().strip()
        return {
            "version": __version__,
            "protocol": PROTOCOL_VERSIONS[-1],
            "engines": self.engines,
            "sessions": len(self.sessions),
            "running": sum(1 for s in self.sessions.values() if s.current is not None),
            "warm": len(self.pool),
            "load": list(os.getloadavg()),
            "cpu_pressure": pressure,
            "mem_total": mem.get("MemTotal"),
            "mem_available": mem.get("MemAvailable"),
            "uptime": round(time.time() - self.started, 3),
            "stopping": self.stopping,
            "disk_quota": self.disk_quota_mode,
            "session_list": [
                {
                    "session": s.id,
                    "workspace": s.workspace,
                    "user": s.account.name,
                    "engine": s.engine_name,
                    "alive": s.alive,
                    "running": s.current is not None,
                    "executions": s.executions,
                    "idle": round(now - s.last_activity, 3),
                    "over_quota": s.over_quota,
                    "terminals": len(s.terminals),
                    "owner": s.owner,
                }
                for s in list(self.sessions.values())[:1000]
            ],
        }

    async def shutdown(self) -> None:
        """SIGTERM: refuse new work, let running executions finish (up to the grace), checkpoint, stop."""
        if self.stopping:
            return
        self.stopping = True
        log.info("shutting down: %d sessions", len(self.sessions))
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.send({"type": "shutdown", "grace": self.config.shutdown_grace_seconds})
        running = [s.current.done for s in self.sessions.values() if s.current is not None]
        if running:
            await asyncio.wait(running, timeout=self.config.shutdown_grace_seconds)
        for s in list(self.sessions.values()):
            if s.current is not None:
                s.kill("worker shutting down")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.save(s, "checkpoint at worker shutdown"), 30)
            await self.close_session(s, "worker shutdown")
        for proc in self.pool:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        for conn in list(self.connections):
            conn.close()
        self.zygote.stop()
        self.forker.stop()
        if self.volumes is not None:
            await self.volumes.detach_all()

    # connections ---------------------------------------------------------------------------------
    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(self, reader, writer)
        self.connections.add(conn)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
