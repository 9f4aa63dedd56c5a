"""The worker server: mutually authenticated TLS, framed JSON, one forked engine per open workspace.

See docs/protocol-worker.md for the protocol and docs on limits. Process layout::

    sagews-worker (root, asyncio; holds the TLS key)
      +-- zygote (root; pre-imports engines; no key in memory)
      |     +-- engine for workspace A (uid sagews_worker_1, rlimits)  [+ pre-forked warm ones]
      |     +-- engine for workspace B (uid sagews_worker_2, rlimits)
      +-- short-lived forks for file/git operations (as the workspace uid)
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import itertools
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sagews import __version__
from sagews.framing import HEADER, FrameError, decode_body, encode, read_frame
from sagews.tls import peer_common_name, server_context
from sagews.worker.cgroup import Cgroups
from sagews.worker.config import WorkerConfig
from sagews.worker.users import WORKSPACE_ID, Account, PoolExhausted, UserPool, kill_uid, purge_uid_files
from sagews.worker.workspace import HELPER_LIMITS, OpError, prepare_dir, private_tmp, run_as

log = logging.getLogger("sagews.worker")

PROTOCOL_VERSIONS = (1,)
CHUNK = 65536
FRAME_BODY_TIMEOUT = 60.0  # a started frame must be complete within this (slow or stuck peers)
ENGINE_FRAME_MAX = 64 * 1024 * 1024
COMMIT_ID = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
MAX_QUEUED = 100  # executions waiting for a busy session
FILE_OPS = {"ls", "read", "write", "rename", "delete", "history"}


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def describe_status(status: int | None) -> str:
    if status is None:
        return "engine process ended"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return "CPU time limit exceeded (SIGXCPU)"
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        return f"engine killed by {name}"
    return f"engine exited with code {os.WEXITSTATUS(status)}"


# ------------------------------------------------------------------------------------------ zygote
@dataclass
class EngineProc:
    pid: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    out_fd: int
    err_fd: int
    exited: asyncio.Future[int]


class Zygote:
    def __init__(self, engines: list[str], on_death: Any = None) -> None:
        self.on_death = on_death
        self.wanted = engines
        self.available: list[str] = []
        self.sock: socket.socket | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.tokens = itertools.count(1)
        self.spawning: dict[int, asyncio.Future[tuple[int, asyncio.Future[int]]]] = {}
        self.exits: dict[int, asyncio.Future[int]] = {}
        self.ready: asyncio.Future[dict[str, Any]] | None = None
        self.started = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        self.ready = loop.create_future()
        self.proc = subprocess.Popen(  # noqa: ASYNC220 (a long-lived helper, never awaited)
            [sys.executable, "-m", "sagews.worker.zygote", str(theirs.fileno()), json.dumps(self.wanted)],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        ours.setblocking(False)
        loop.add_reader(ours.fileno(), self._on_message)
        msg = await asyncio.wait_for(self.ready, 120)
        self.available = list(msg["engines"])
        self.started.set()

    def _on_message(self) -> None:
        if self.sock is None:
            raise RuntimeError("the zygote is not running")
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
                for fut in self.exits.values():
                    if not fut.done():
                        fut.set_result(-1)
                for sfut in self.spawning.values():
                    if not sfut.done():
                        sfut.set_exception(RuntimeError("the zygote is gone"))
                self.exits.clear()
                self.spawning.clear()
                if self.ready and not self.ready.done():
                    self.ready.set_exception(RuntimeError("zygote died during start"))
                elif self.on_death is not None:
                    self.on_death()
                return
            msg = json.loads(data)
            op = msg.get("op")
            if op == "ready" and self.ready:
                self.ready.set_result(msg)
            elif op == "spawned":
                # the exit future exists from here on, so an engine that dies at once is still reported
                exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
                self.exits[msg["pid"]] = exited
                sfut = self.spawning.pop(msg["token"], None)
                if sfut and not sfut.done():
                    sfut.set_result((msg["pid"], exited))
            elif op == "exited":
                fut = self.exits.pop(msg["pid"], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg["status"])

    async def spawn(self) -> EngineProc:
        if self.sock is None:
            raise RuntimeError("the zygote is not running")
        loop = asyncio.get_running_loop()
        ctrl, child_ctrl = socket.socketpair()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        token = next(self.tokens)
        fut: asyncio.Future[tuple[int, asyncio.Future[int]]] = loop.create_future()
        self.spawning[token] = fut
        try:
            try:
                socket.send_fds(
                    self.sock,
                    [json.dumps({"op": "spawn", "token": token}).encode()],
                    [child_ctrl.fileno(), out_w, err_w],
                )
            finally:
                child_ctrl.close()
                os.close(out_w)
                os.close(err_w)
            pid, exited = await asyncio.wait_for(fut, 30)
            os.set_blocking(out_r, False)
            os.set_blocking(err_r, False)
            ctrl.setblocking(False)
            reader, writer = await asyncio.open_unix_connection(sock=ctrl, limit=ENGINE_FRAME_MAX)
        except BaseException:
            self.spawning.pop(token, None)
            ctrl.close()
            os.close(out_r)
            os.close(err_r)
            raise
        return EngineProc(pid, reader, writer, out_r, err_r, exited)

    def stop(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


# ----------------------------------------------------------------------------------------- sessions
@dataclass
class Execution:
    conn: Connection
    req_id: Any
    session: str
    done: asyncio.Future[dict[str, Any]]
    started: float = field(default_factory=time.monotonic)
    output: int = 0
    flooded: bool = False
    limit: str | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    held: dict[str, Any] | None = None


class Session:
    def __init__(
        self, worker: Worker, workspace: str, account: Account, root: Path, tmp: Path, *, engine: str
    ) -> None:
        self.worker = worker
        self.id = uuid.uuid4().hex
        self.workspace = workspace
        self.account = account
        self.root = root
        self.tmp = tmp
        self.engine_name = engine
        self.proc: EngineProc | None = None
        self.lock = asyncio.Lock()
        # saves and restores of one workspace run one at a time: two concurrent `git commit`s in one
        # checkout fail on git's index.lock, and a save must not read a half-restored repository
        self.git_lock = asyncio.Lock()
        self.current: Execution | None = None
        self.last: Execution | None = None
        self.alive = False
        self.death: str | None = None
        self.last_activity = time.monotonic()
        self.idle_handle: asyncio.TimerHandle | None = None
        self.over_quota = False
        self.quota_pending = False
        self.quota_dirty = False
        self.closed = False
        self.decoders = {
            "stdout": codecs.getincrementaldecoder("utf-8")("replace"),
            "stderr": codecs.getincrementaldecoder("utf-8")("replace"),
        }
        self.reader_task: asyncio.Task[None] | None = None
        self.executions = 0
        self.waiting = 0
        # a restore whose files are being checked out in the background (Worker.restore): ls/read
        # are answered from the staged commit, everything else waits for `checkout`
        self.staged: dict[str, Any] | None = None
        self.checkout: asyncio.Task[None] | None = None
        self.restore_error: str | None = None
        self.staged_readers = 0  # ls/read in flight against the staging repository
        self.no_staged_readers = asyncio.Event()
        self.no_staged_readers.set()

    @property
    def limits(self) -> Any:
        return self.worker.config.limits

    def env(self) -> dict[str, str]:
        tmp = str(self.tmp)
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.root),
            "USER": self.account.name,
            "LOGNAME": self.account.name,
            "LANG": "C.UTF-8",
            "TMPDIR": tmp,
            "DOT_SAGE": os.path.join(tmp, ".sage"),
            "MPLCONFIGDIR": os.path.join(tmp, "matplotlib"),
            "MPLBACKEND": "Agg",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "SAGEWS_WORKSPACE": self.workspace,
        }

    async def start_engine(self) -> None:
        """Assign a (warm) engine to this session; pooled engines that died meanwhile are skipped."""
        for _ in range(len(self.worker.pool)):
            try:
                await self._start_engine()
            except ProtocolError:
                log.warning("a warm engine for %s failed to start; trying the next", self.workspace)
            else:
                return
        await self._start_engine()  # pool empty: a fresh fork, whose failure is reported

    async def _start_engine(self) -> None:
        proc = await self.worker.take_engine()
        self.proc = proc
        if self.worker.cgroups is not None:
            self.worker.cgroups.attach(self.workspace, proc.pid)
        loop = asyncio.get_running_loop()
        loop.add_reader(proc.out_fd, self._on_output, proc.out_fd, "stdout")
        loop.add_reader(proc.err_fd, self._on_output, proc.err_fd, "stderr")
        proc.writer.write(
            encode(
                {
                    "type": "assign",
                    "uid": self.account.uid,
                    "gid": self.account.gid,
                    "cwd": str(self.root),
                    "env": self.env(),
                    "limits": self.worker.config.limits.__dict__,
                }
            )
        )
        try:
            msg = await asyncio.wait_for(read_frame(proc.reader, ENGINE_FRAME_MAX), 30)
        except (TimeoutError, FrameError, asyncio.IncompleteReadError, ConnectionError) as exc:
            msg = {"message": f"{type(exc).__name__} {exc}"}
        if not msg or msg.get("type") != "ready":
            self._stop_engine()
            raise ProtocolError("engine_failed", f"engine did not start: {msg and msg.get('message')}")
        self.alive = True
        self.death = None
        self.reader_task = asyncio.create_task(self._read_engine(proc))

    def _on_output(self, fd: int, name: str) -> None:
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(fd)
            return
        self._forward(name, data)

    def _forward(self, name: str, data: bytes) -> None:
        ex = self.current or self.last
        if ex is None or ex.flooded:
            return
        limit = self.limits.output_bytes
        ex.output += len(data)
        if ex.output > limit:
            keep = max(0, len(data) - (ex.output - limit))
            text = self.decoders[name].decode(data[:keep])
            if text:
                ex.conn.send(
                    {"type": "stream", "re": ex.req_id, "session": self.id, "name": name, "text": text}
                )
            self._flood(ex)
            return
        text = self.decoders[name].decode(data)
        if text:
            ex.conn.send({"type": "stream", "re": ex.req_id, "session": self.id, "name": name, "text": text})

    def _flood(self, ex: Execution) -> None:
        ex.flooded = True
        ex.limit = ex.limit or "output"
        ex.conn.send(
            {
                "type": "stream",
                "re": ex.req_id,
                "session": self.id,
                "name": "stderr",
                "text": f"\n[sagews: output limit of {self.limits.output_bytes} bytes reached: the rest is "
                "discarded and the execution interrupted]\n",
            }
        )
        if ex is self.current:
            self._interrupt_then_kill(ex)

    def _interrupt_then_kill(self, ex: Execution) -> None:
        self.interrupt()
        ex.timers.append(
            asyncio.get_running_loop().call_later(
                self.limits.interrupt_grace_seconds, self._kill_if_running, ex
            )
        )

    def _kill_if_running(self, ex: Execution) -> None:
        if self.current is ex:
            self.kill(f"did not stop within {self.limits.interrupt_grace_seconds} s of an interrupt")

    def _drain(self) -> None:
        if self.proc is None:
            return
        for fd, name in ((self.proc.out_fd, "stdout"), (self.proc.err_fd, "stderr")):
            for _ in range(64):
                try:
                    data = os.read(fd, CHUNK)
                except OSError:
                    break
                if not data:
                    break
                self._forward(name, data)

    async def _read_engine(self, proc: EngineProc) -> None:
        try:
            while True:
                msg = await read_frame(proc.reader, ENGINE_FRAME_MAX)
                if msg is None:
                    break
                ex = self.current
                kind = msg.get("type")
                if ex is None or msg.get("id") != ex.req_id:
                    continue
                if kind == "done":
                    self._drain()
                    if not ex.done.done():
                        ex.done.set_result(msg)
                elif kind in {"display", "result", "exception"}:
                    size = len(json.dumps(msg.get("data", ""))) if kind != "exception" else 0
                    ex.output += size
                    if ex.flooded:
                        continue
                    if ex.output > self.limits.output_bytes:
                        self._flood(ex)
                        continue
                    out = {k: v for k, v in msg.items() if k in {"data", "ename", "evalue", "traceback"}}
                    frame = {"type": kind, "re": ex.req_id, "session": self.id, **out}
                    if kind == "result":
                        ex.held = frame  # goes out with `done`, in one write
                    else:
                        ex.conn.send(frame)
        except (FrameError, asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        # the engine is gone (or talked garbage): make sure every process of the uid is gone too
        status: int | None = None
        if proc is self.proc:
            self.alive = False
            kill_uid(self.account.uid)
            with contextlib.suppress(TimeoutError):
                status = await asyncio.wait_for(asyncio.shield(proc.exited), 2)
            self.death = self.death or describe_status(status)
            cg = self.worker.cgroups
            if cg is not None and cg.memory_events(self.workspace).get("oom_kill"):
                self.death += " (out of memory: cgroup memory.max reached)"
            ex = self.current
            if ex is not None and not ex.done.done():
                self._drain()
                ex.done.set_result({"type": "done", "status": "died", "message": self.death})

    def interrupt(self) -> None:
        if self.proc is not None and self.alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGINT)

    def kill(self, reason: str) -> None:
        log.info(
            "session %s (%s): killing every process of %s: %s",
            self.id,
            self.workspace,
            self.account.name,
            reason,
        )
        self.death = reason
        if self.worker.cgroups is not None:
            self.worker.cgroups.kill(self.workspace)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        kill_uid(self.account.uid)

    def _stop_engine(self) -> None:
        ex = self.current
        if ex is not None and not ex.done.done():
            ex.done.set_result({"type": "done", "status": "died", "message": self.death or "engine stopped"})
        proc = self.proc
        if proc is None:
            return
        loop = asyncio.get_running_loop()
        for fd in (proc.out_fd, proc.err_fd):
            with contextlib.suppress(Exception):
                loop.remove_reader(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        proc.writer.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        kill_uid(self.account.uid)
        self.proc = None
        self.alive = False

    async def stop_engine(self, reason: str) -> None:
        """Kill the engine and everything of the uid, and wait until that is fully noticed."""
        self.death = reason
        old = self.reader_task
        self._stop_engine()
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old, 5)

    async def restart(self) -> None:
        await self.stop_engine("restarted")
        await self.start_engine()

    async def execute(self, conn: Connection, req_id: Any, code: str, engine: str) -> dict[str, Any]:
        if self.waiting >= MAX_QUEUED:
            raise ProtocolError("busy", f"{MAX_QUEUED} executions are already queued for this session")
        self.waiting += 1
        try:
            await self.lock.acquire()
        finally:
            self.waiting -= 1
        try:
            return await self._execute(conn, req_id, code, engine)
        finally:
            self.lock.release()

    async def _execute(self, conn: Connection, req_id: Any, code: str, engine: str) -> dict[str, Any]:
        if self.restore_error is not None:
            raise ProtocolError("restore_failed", self.restore_error)
        if not self.alive or self.proc is None:
            raise ProtocolError(
                "session_dead", f"the session's engine is not running ({self.death}); restart it"
            )
        loop = asyncio.get_running_loop()
        ex = Execution(conn, req_id, self.id, loop.create_future())
        self.current = self.last = ex
        self.executions += 1
        for d in self.decoders.values():
            d.reset()
        self.proc.writer.write(encode({"type": "exec", "id": req_id, "code": code, "engine": engine}))
        ex.timers.append(loop.call_later(self.limits.walltime_seconds, self._walltime, ex))
        try:
            result = await ex.done
        finally:
            for t in ex.timers:
                t.cancel()
            self.current = None
            self.touch()
        status = result.get("status", "ok")
        reply: dict[str, Any] = {
            "type": "done",
            "re": req_id,
            "session": self.id,
            "status": status,
            "elapsed": round(time.monotonic() - ex.started, 6),
        }
        if ex.limit:
            reply["limit"] = ex.limit
            reply["status"] = "limit"
            reply["message"] = {
                "output": f"output limit of {self.limits.output_bytes} bytes exceeded",
                "walltime": f"wall-clock limit of {self.limits.walltime_seconds} s exceeded",
            }[ex.limit]
        if status == "died":
            reply["message"] = reply.get("message") or result.get("message")
            reply["engine"] = result.get("message")
        self.schedule_quota_check()
        if ex.held is not None:
            reply["_before"] = ex.held
        return reply

    def _walltime(self, ex: Execution) -> None:
        if self.current is ex:
            ex.limit = "walltime"
            ex.conn.send(
                {
                    "type": "stream",
                    "re": ex.req_id,
                    "session": self.id,
                    "name": "stderr",
                    "text": f"\n[sagews: wall-clock limit of {self.limits.walltime_seconds} s reached: "
                    "interrupting]\n",
                }
            )
            self._interrupt_then_kill(ex)

    def touch(self) -> None:
        self.last_activity = time.monotonic()
        if self.idle_handle is None:
            self._arm_idle(self.limits.idle_timeout_seconds)

    def _arm_idle(self, delay: float) -> None:
        self.idle_handle = asyncio.get_running_loop().call_later(delay, self._idle_check)

    def _idle_check(self) -> None:
        self.idle_handle = None
        idle = time.monotonic() - self.last_activity
        if self.current is not None or idle < self.limits.idle_timeout_seconds:
            self._arm_idle(max(0.05, self.limits.idle_timeout_seconds - idle))
            return
        log.info("closing idle session %s (%s)", self.id, self.workspace)
        self.worker.forget(self)  # at once, so no request reaches a session that is being closed
        self.worker.spawn_task(self.worker.close_session(self, "idle timeout"))

    def schedule_quota_check(self, now: bool = False) -> None:
        """Measure the checkout (in a fork, as the workspace uid) soon; at most one measurement at a time
        per session, and one more afterwards if anything changed meanwhile."""
        if self.quota_pending:
            self.quota_dirty = True
            return
        self.quota_pending = True
        self.quota_dirty = False
        delay = 0.0 if now else 1.0
        asyncio.get_running_loop().call_later(delay, lambda: self.worker.spawn_task(self._quota_check()))

    async def _quota_check(self) -> None:
        try:
            if self.id not in self.worker.sessions:
                return
            try:
                used = (await self.op("du", {}))["bytes"]
            except OpError:
                return
        finally:
            self.quota_pending = False
            if self.quota_dirty and self.id in self.worker.sessions:
                self.schedule_quota_check(now=True)
        quota = self.limits.disk_quota_mb << 20
        was = self.over_quota
        self.over_quota = used > quota
        if self.over_quota and not was and self.last is not None:
            self.last.conn.send(
                {
                    "type": "quota",
                    "session": self.id,
                    "used": used,
                    "quota": quota,
                    "message": f"disk quota exceeded: {used} bytes used of {quota}; writes and saves are "
                    "refused until files are deleted",
                }
            )

    async def op(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        return await run_as(
            self.account,
            self.root,
            self.tmp,
            op,
            args,
            fsize=self.limits.file_size_mb << 20,
            max_bytes=int(self.worker.config.max_frame * 0.7),
        )

    async def settled(self) -> None:
        """Wait for a background checkout; refuse to work on a workspace whose restore failed."""
        if self.checkout is not None and not self.checkout.done():
            await asyncio.shield(self.checkout)
        if self.restore_error is not None:
            raise ProtocolError("restore_failed", self.restore_error)

    async def close(self) -> None:
        if self.idle_handle is not None:
            self.idle_handle.cancel()
        if self.checkout is not None and not self.checkout.done():
            with contextlib.suppress(Exception):  # its helper runs as our uid: let it finish first
                await asyncio.wait_for(asyncio.shield(self.checkout), 120)
        ex = self.current
        self.kill("session closed")
        if ex is not None and not ex.done.done():
            ex.done.set_result({"type": "done", "status": "died", "message": "session closed"})
        task = self.reader_task
        self._stop_engine()
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
        shutil.rmtree(self.tmp, ignore_errors=True)
        purge_uid_files(self.account.uid)
        if self.worker.cgroups is not None:
            self.worker.cgroups.remove(self.workspace)


# ------------------------------------------------------------------------------------------- worker
class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.zygote = Zygote(config.engines, on_death=self._zygote_died)
        self.pool: list[EngineProc] = []
        self.refilling = False
        self.sessions: dict[str, Session] = {}
        self.by_workspace: dict[str, Session] = {}
        self.opening: dict[str, asyncio.Future[Session]] = {}
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
        if config.cgroup:
            self.cgroups = Cgroups(config.cgroup_root, config.cgroup_memory_mb, config.limits.processes)

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
        lim = self.config.limits
        HELPER_LIMITS.update(
            processes=lim.processes,
            address_space=lim.address_space_mb << 20,
            cpu=max(1, int(lim.cpu_seconds)),
            open_files=lim.open_files,
        )
        self.users = UserPool(self.state, self.config.user_prefix, self.config.user_pool_size)

    async def start(self) -> int:
        self._prepare_dirs()
        ctx = server_context(self.config.cert, self.config.key, self.config.ca)
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
        self.zygote = Zygote(self.config.engines, on_death=self._zygote_died)
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
    async def open_session(self, workspace: object, engine: object) -> tuple[Session, bool]:
        if not isinstance(workspace, str) or not WORKSPACE_ID.match(workspace):
            raise ProtocolError("bad_field", "workspace must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
        engine = self.config.default_engine if engine is None else engine
        self.check_engine(engine)
        existing = self.by_workspace.get(workspace)
        if existing is not None:
            return existing, True
        pending = self.opening.get(workspace)
        if pending is not None:
            return await asyncio.shield(pending), True
        fut: asyncio.Future[Session] = asyncio.get_running_loop().create_future()
        self.opening[workspace] = fut
        try:
            if self.users is None:
                raise RuntimeError("the worker is not started")
            root = self.workspaces / workspace
            busy = set(self.by_workspace)
            try:
                account = self.users.account_for(workspace, root, busy)
            except PoolExhausted as exc:
                raise ProtocolError("no_capacity", str(exc)) from None
            prepare_dir(root, account)
            tmp = private_tmp(self.tmp, account)
            session = Session(self, workspace, account, root, tmp, engine=str(engine))
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
        if session.last is not None and reason == "idle timeout":
            session.last.conn.send({"type": "closed", "session": session.id, "reason": reason})
        await session.close()

    # workspace saves -----------------------------------------------------------------------------
    def _bundle_dir(self, workspace: str) -> Path:
        path = self.state / "bundles" / workspace
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    async def save(self, session: Session, message: object) -> dict[str, Any]:
        async with session.git_lock:
            await session.settled()  # a failed restore's checkout must not be saved over the workspace
            return await self._save(session, message)

    async def _save(self, session: Session, message: object) -> dict[str, Any]:
        if session.over_quota:
            raise ProtocolError("quota", "disk quota exceeded: delete files before saving")
        bdir = self._bundle_dir(session.workspace)
        marker = bdir / "saved"
        last = marker.read_text().strip() if marker.exists() else None
        res = await session.op("save", {"message": message, "last": last})
        # the helper ran as the workspace user: check what we are going to store as root
        if not isinstance(res.get("commit"), str) or not COMMIT_ID.match(res["commit"]):
            raise ProtocolError("git", "save produced no valid commit id")
        reply: dict[str, Any] = {"commit": res["commit"], "bundle": None, "base": False, "size": 0}
        if res["bundle"] is None:
            reply["unchanged"] = True
            return reply
        data = base64.b64decode(res["bundle"])
        if res["base"]:
            for old in bdir.glob("*.bundle"):
                old.unlink()
        seq = len(list(bdir.glob("*.bundle")))
        (bdir / f"{seq:06d}.bundle").write_bytes(data)
        marker.write_text(res["commit"])
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
        bdir = self._bundle_dir(session.workspace)
        if bundles is None:
            files = sorted(bdir.glob("*.bundle"))
            if not files:
                raise ProtocolError("not_found", "no saved bundles for this workspace on this worker")
            bundles = [base64.b64encode(f.read_bytes()).decode() for f in files]
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
            (self._bundle_dir(session.workspace) / "saved").write_text(commit)
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

    # connections ---------------------------------------------------------------------------------
    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(self, reader, writer)
        self.connections.add(conn)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)


class Connection:
    def __init__(self, worker: Worker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.worker = worker
        self.reader = reader
        self.writer = writer
        self.version: int | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sslobj = writer.get_extra_info("ssl_object")
        self.peer = peer_common_name(sslobj) if sslobj is not None else None

    def send(self, msg: dict[str, Any], before: dict[str, Any] | None = None) -> None:
        if self.closed:
            return
        transport = self.writer.transport
        if transport.is_closing():
            self.closed = True
            return
        if transport.get_write_buffer_size() > 4 * self.worker.config.max_frame + (64 << 20):
            log.warning("client %s does not read its replies: closing", self.peer)
            self.close()
            return
        self.writer.write(encode(msg) if before is None else encode(before) + encode(msg))

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(Exception):
            self.writer.close()

    def error(self, req_id: Any, code: str, message: str) -> None:
        self.send({"type": "error", "re": req_id, "code": code, "message": message})

    async def run(self) -> None:
        max_frame = self.worker.config.max_frame
        try:
            while not self.closed:
                try:
                    msg = await self.read_request(max_frame)
                except FrameError as exc:
                    self.error(None, exc.code, exc.message)
                    if exc.code in {"too_large", "timeout"}:
                        break  # the body was not read: the stream cannot be resynchronised
                    continue
                if msg is None:
                    break
                self.dispatch(msg)
                await self.writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.drain(), 1)
            self.close()

    async def read_request(self, max_frame: int) -> dict[str, Any] | None:
        """sagews.framing.read_frame, plus: a started frame must be complete within FRAME_BODY_TIMEOUT."""
        try:
            header = await self.reader.readexactly(HEADER.size)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return None
            raise
        (length,) = HEADER.unpack(header)
        if length > max_frame:
            raise FrameError("too_large", f"frame of {length} bytes exceeds the limit of {max_frame}")
        try:
            body = await asyncio.wait_for(self.reader.readexactly(length), FRAME_BODY_TIMEOUT)
        except TimeoutError:
            raise FrameError("timeout", f"frame body not received within {FRAME_BODY_TIMEOUT} s") from None
        return decode_body(body)

    def dispatch(self, msg: dict[str, Any]) -> None:
        req_id = msg.get("id")
        if (
            not isinstance(req_id, (int, str))
            or isinstance(req_id, bool)
            or (isinstance(req_id, str) and len(req_id) > 128)
            or (isinstance(req_id, int) and abs(req_id) > 2**53)
        ):
            self.error(
                None, "bad_message", "every request needs an id: an integer or a string of <= 128 chars"
            )
            return
        kind = msg.get("type")
        if not isinstance(kind, str):
            self.error(req_id, "bad_message", "every request needs a type (string)")
            return
        if self.version is None and kind != "hello":
            self.error(req_id, "hello_required", "send hello first")
            return
        handler = getattr(self, f"do_{kind}", None) if kind.isidentifier() and kind.islower() else None
        if handler is None:
            self.error(req_id, "unknown_type", f"unknown request type {kind[:64]!r}")
            return
        if self.worker.stopping and kind not in {"hello", "status"}:
            self.error(req_id, "shutting_down", "the worker is shutting down")
            return
        task = asyncio.get_running_loop().create_task(self._handle(handler, req_id, msg))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handle(self, handler: Any, req_id: Any, msg: dict[str, Any]) -> None:
        try:
            reply = await handler(req_id, msg)
            if reply is not None:
                reply.setdefault("re", req_id)
                before = reply.pop("_before", None)
                self.send(reply, before=before)
        except ProtocolError as exc:
            self.error(req_id, exc.code, exc.message)
        except OpError as exc:
            self.error(req_id, exc.code, exc.message)
        except Exception as exc:
            log.exception("request %r failed", msg.get("type"))
            self.error(req_id, "internal", f"{type(exc).__name__}: {exc}"[:500])

    # handlers ----------------------------------------------------------------------------------
    async def do_hello(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        versions = msg.get("versions")
        if not isinstance(versions, list) or not all(isinstance(v, int) for v in versions):
            raise ProtocolError("bad_field", "versions must be a list of integers")
        common = set(versions) & set(PROTOCOL_VERSIONS)
        if not common:
            raise ProtocolError(
                "bad_version", f"no common protocol version; this worker speaks {PROTOCOL_VERSIONS}"
            )
        self.version = max(common)
        return {
            "type": "hello",
            "version": self.version,
            "server": f"sagews-worker {__version__}",
            "engines": self.worker.engines,
            "max_frame": self.worker.config.max_frame,
            "peer": self.peer,
        }

    async def do_status(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        return {"type": "status", **self.worker.status()}

    async def do_open(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        t0 = time.monotonic()
        session, existing = await self.worker.open_session(msg.get("workspace"), msg.get("engine"))
        return {
            "type": "opened",
            "session": session.id,
            "workspace": session.workspace,
            "engine": session.engine_name,
            "user": session.account.name,
            "existing": existing,
            "elapsed": round(time.monotonic() - t0, 6),
        }

    async def do_exec(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session = self.worker.session(msg.get("session"))
        code = msg.get("code")
        if not isinstance(code, str):
            raise ProtocolError("bad_field", "code must be a string")
        engine = msg.get("engine", session.engine_name)
        self.worker.check_engine(engine)
        return await session.execute(self, req_id, code, str(engine))

    async def do_interrupt(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session = self.worker.session(msg.get("session"))
        session.interrupt()
        return {"type": "ok", "session": session.id}

    async def do_kill(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session = self.worker.session(msg.get("session"))
        session.kill("killed on request")
        return {"type": "ok", "session": session.id}

    async def do_restart(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session = self.worker.session(msg.get("session"))
        await session.settled()  # a restore's checkout starts the engine itself when it is done
        await session.restart()
        return {"type": "ok", "session": session.id}

    async def do_close(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session = self.worker.session(msg.get("session"))
        await self.worker.close_session(session, "closed on request")
        return {"type": "ok", "session": session.id}

    async def _file_op(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session = self.worker.session(msg.get("session"))
        kind = str(msg["type"])
        if kind == "write" and session.over_quota:
            raise ProtocolError("quota", "disk quota exceeded: delete files first")
        args = {k: v for k, v in msg.items() if k not in {"type", "id", "session"} and not k.startswith("_")}
        staged = session.staged
        if staged is not None and kind in {"ls", "read"}:
            args["_staged"] = staged  # files still being checked out: answer from the staged commit
            session.staged_readers += 1
            session.no_staged_readers.clear()
            try:
                res = await session.op(kind, args)
            finally:
                session.staged_readers -= 1
                if not session.staged_readers:
                    session.no_staged_readers.set()
        else:
            await session.settled()
            res = await session.op(kind, args)
        if kind in {"write", "rename", "delete"}:
            session.last = session.last or Execution(
                self, req_id, session.id, asyncio.get_running_loop().create_future()
            )
            session.schedule_quota_check(now=True)
        return {"type": kind, "session": session.id, **res}

    do_ls = do_read = do_write = do_rename = do_delete = do_history = _file_op

    async def do_save(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session = self.worker.session(msg.get("session"))
        res = await self.worker.save(session, msg.get("message"))
        return {"type": "saved", "session": session.id, **res}

    async def do_restore(self, req_id: Any, msg: dict[str, Any]) -> dict[str, Any]:
        session = self.worker.session(msg.get("session"))
        res = await self.worker.restore(session, msg.get("bundles"))
        return {"type": "restored", "session": session.id, **res}


# ------------------------------------------------------------------------------------------- main
async def serve(config: WorkerConfig, ready: Any = None) -> None:
    worker = Worker(config)
    port = await worker.start()
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result("SIGTERM"))
    loop.add_signal_handler(signal.SIGINT, lambda: stop.done() or stop.set_result("SIGINT"))
    print(f"sagews-worker listening on {config.host}:{port} engines={','.join(worker.engines)}", flush=True)
    if ready is not None:
        ready(port)
    await stop
    await worker.shutdown()
