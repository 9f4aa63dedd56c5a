"""A session: one open workspace, its engine process, its executions, limits and file operations."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import shutil
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sagews.framing import HEADER, FrameError, decode_body, encode, read_frame
from sagews.worker.docs import SessionDocs
from sagews.worker.isolation import private_mounts
from sagews.worker.limiter import QueueFull
from sagews.worker.protocol import CHUNK, MAX_QUEUED, ProtocolError
from sagews.worker.users import Account, kill_uid, purge_uid_files
from sagews.worker.workspace import OpError, run_as
from sagews.worker.zygote_client import EngineProc

if TYPE_CHECKING:
    from sagews.worker.connection import Connection
    from sagews.worker.terminal import Terminal
    from sagews.worker.worker import Worker

log = logging.getLogger("sagews.worker")
COMPLETE_SECONDS = 5.0  # a completion (a user's __dir__ or __getattr__ runs) is interrupted after this
MAX_MATCHES = 500


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
        self.killing: asyncio.Task[int] | None = None
        self.owner = ""  # the backend's account that opened it (``open.owner``): per-owner caps
        self.engine_pid = 0  # the engine process (its pgid gets interrupts); proc.pid is its init
        self.running = asyncio.Event()  # an execution is in progress (the control socket is read then)
        self.paused = False  # the engine's pipes are not read (output budget spent, nothing running)
        self.eof: set[int] = set()  # pipe ends that reached EOF
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
        self.terminals: dict[str, Terminal] = {}  # sagews/worker/terminal.py
        self.docs = SessionDocs(self)  # shared text documents (sagews/worker/docs.py)

    @property
    def limits(self) -> Any:
        return self.worker.config.limits

    def env(self) -> dict[str, str]:
        tmp = str(self.tmp / "tmp")  # the same directory as /tmp inside the mount namespace
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
        if self.killing is not None:
            await self.killing  # the previous engine's processes are gone before the next one starts
        proc = await self.worker.take_engine()
        self.proc = proc
        self.engine_pid = proc.pid
        self.paused = False
        self.eof = set()
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
                    "isolate": self.worker.isolated,
                    "mounts": private_mounts(str(self.tmp)),
                }
            )
        )
        try:
            msg = await asyncio.wait_for(read_frame(proc.reader, CHUNK), 30)
        except (TimeoutError, FrameError, asyncio.IncompleteReadError, ConnectionError) as exc:
            msg = {"message": f"{type(exc).__name__} {exc}"}
        if not msg or msg.get("type") != "ready":
            self._stop_engine()
            raise ProtocolError("engine_failed", f"engine did not start: {msg and msg.get('message')}")
        if self.closed:  # closed while its engine started: the engine (and its descriptors) go too
            self._stop_engine()
            raise ProtocolError("session_dead", "the session was closed while its engine started")
        if self.worker.isolated:
            # the engine is the child of its namespace's init (proc.pid); it reported its own pid
            # (read before user code could run: trusted), the target of interrupts
            self.engine_pid = int(msg.get("pid") or proc.pid)
            proc.init_pid = int(msg.get("init") or 0)  # its parent: the namespace's PID 1
            if self.worker.cgroups is not None:
                self.worker.cgroups.attach(self.workspace, self.engine_pid)
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
            self.eof.add(fd)
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(fd)
            return
        self._forward(name, data)

    def _pause_output(self) -> None:
        """Stop reading the engine's pipes: output produced between executions beyond the last one's
        budget is not drained (that would cost the worker a core for a background ``yes``); the writer
        blocks once the pipe (64 KiB) is full, until the next execution starts."""
        if self.paused or self.proc is None:
            return
        self.paused = True
        loop = asyncio.get_running_loop()
        for fd in (self.proc.out_fd, self.proc.err_fd):
            with contextlib.suppress(Exception):
                loop.remove_reader(fd)

    def _resume_output(self) -> None:
        if not self.paused or self.proc is None:
            return
        self.paused = False
        loop = asyncio.get_running_loop()
        for fd, name in ((self.proc.out_fd, "stdout"), (self.proc.err_fd, "stderr")):
            if fd not in self.eof:
                loop.add_reader(fd, self._on_output, fd, name)

    def _forward(self, name: str, data: bytes) -> None:
        ex = self.current or self.last
        if ex is None or ex.flooded:
            if self.current is None:
                self._pause_output()
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
        if ex is not self.current:  # output after its execution returned: no notice, just stop reading
            self._pause_output()
            return
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

    def frame_limit(self) -> int:
        """The largest frame an engine may send: a rich output as large as the output budget."""
        return self.limits.output_bytes + 65536

    async def _next_frame(self, proc: EngineProc) -> dict[str, Any] | None:
        """The next frame of the running execution; None when the engine is gone.

        The control socket is read only while an execution runs: frames a background thread sends
        between executions wait in the socket (its writer blocks when the buffer is full) and are
        counted against the next execution. A frame longer than ``frame_limit`` ends the session;
        once the execution's output budget is spent, frames over 64 KiB are skipped unparsed (the
        small ones still are parsed: one of them is the execution's ``done``)."""
        reader = proc.reader
        while True:
            if self.current is None:
                started = asyncio.ensure_future(self.running.wait())
                try:
                    await asyncio.wait({started, proc.exited}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    started.cancel()
                if self.current is None:
                    if proc.exited.done():
                        return None
                    continue
            try:
                header = await reader.readexactly(HEADER.size)
            except asyncio.IncompleteReadError:
                return None
            (length,) = HEADER.unpack(header)
            if length > self.frame_limit():
                raise FrameError("too_large", f"the engine sent a frame of {length} bytes")
            ex = self.current  # the frame belongs to the execution running when it arrives
            if ex is None or ex.flooded:
                ex = ex or self.last
                if ex is not None:
                    ex.output += length
                if ex is None or length > CHUNK:
                    await self._skip(reader, length)
                    continue
                return decode_body(await reader.readexactly(length))  # small: may be the `done`
            ex.output += length
            if ex.output > self.limits.output_bytes:
                await self._skip(reader, length)
                self._flood(ex)
                continue
            return decode_body(await reader.readexactly(length))

    @staticmethod
    async def _skip(reader: asyncio.StreamReader, length: int) -> None:
        while length:
            chunk = await reader.read(min(length, 1 << 20))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", length)
            length -= len(chunk)

    async def _read_engine(self, proc: EngineProc) -> None:
        try:
            while True:
                msg = await self._next_frame(proc)
                if msg is None:
                    break
                ex = self.current
                kind = msg.get("type")
                if ex is None or msg.get("id") != ex.req_id:
                    continue  # counted against the output budget (_next_frame), otherwise ignored
                if kind == "done":
                    self._drain()
                    if not ex.done.done():
                        ex.done.set_result(msg)
                elif kind in {"display", "result", "exception"}:
                    if ex.flooded:
                        continue
                    out = {k: v for k, v in msg.items() if k in {"data", "ename", "evalue", "traceback"}}
                    frame = {"type": kind, "re": ex.req_id, "session": self.id, **out}
                    if kind == "result":
                        ex.held = frame  # goes out with `done`, in one write
                    else:
                        ex.conn.send(frame)
        except (FrameError, asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            if proc is self.proc and not proc.exited.done():
                self.death = self.death or f"the engine broke its channel ({exc}): killed"
                self._sigkill(proc)
        # the engine is gone (or talked garbage): make sure every process of the uid is gone too
        status: int | None = None
        if proc is self.proc:
            self.alive = False
            with contextlib.suppress(TimeoutError):  # its own status first (killing would mask it)
                status = await asyncio.wait_for(asyncio.shield(proc.exited), 2)
            await self.kill_all()
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
                os.killpg(self.engine_pid, signal.SIGINT)

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
            self._sigkill(self.proc)
        self.kill_all()

    @staticmethod
    def _sigkill(proc: EngineProc) -> None:
        """SIGKILL the engine's namespace init (its exit waits until the kernel has killed everything in
        the namespace; then the keeper exits and ``proc.exited`` resolves), or the engine itself."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.init_pid or proc.pid, signal.SIGKILL)

    def kill_all(self) -> asyncio.Task[int]:
        """Kill every process of the engine: its PID namespace's init (the kernel kills the rest of the
        namespace with it), or without namespaces every process of the workspace's uid (/proc scans in
        the executor). The task is awaited before a new engine or helper starts."""
        task = self.killing
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._kill_all(self.proc))
            self.killing = task
        return task

    async def _kill_all(self, proc: EngineProc | None) -> int:
        if not self.worker.isolated:
            return await kill_uid(self.account.uid)
        if proc is not None:
            self._sigkill(proc)
            with contextlib.suppress(TimeoutError):  # reaped only once every process of it is gone
                await asyncio.wait_for(asyncio.shield(proc.exited), 10)
        return 1

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
        self._sigkill(proc)
        self.kill_all()
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
        await self.kill_all()

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
        self.executions += 1
        for d in self.decoders.values():
            d.reset()
        frame = {"type": "exec", "id": req_id, "code": code, "engine": engine}
        try:
            ex, result = await self._engine_call(
                conn, req_id, frame, self.limits.walltime_seconds, self._walltime
            )
        finally:
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

    async def _engine_call(
        self, conn: Connection, req_id: Any, frame: dict[str, Any], seconds: float, on_time: Any
    ) -> tuple[Execution, dict[str, Any]]:
        """Send ``frame`` to the engine and wait for its ``done`` (the caller holds ``self.lock``); after
        ``seconds``, ``on_time(ex)`` runs (interrupt, then kill)."""
        if self.proc is None:
            raise ProtocolError("session_dead", "the session's engine is not running")
        loop = asyncio.get_running_loop()
        ex = Execution(conn, req_id, self.id, loop.create_future())
        self.current = self.last = ex
        self.running.set()
        self._resume_output()
        self.proc.writer.write(encode(frame))
        ex.timers.append(loop.call_later(seconds, on_time, ex))
        try:
            return ex, await ex.done
        finally:
            for t in ex.timers:
                t.cancel()
            self.current = None
            self.running.clear()

    async def complete(
        self, conn: Connection, req_id: Any, code: str, cursor: int, engine: str
    ) -> dict[str, Any]:
        """Names for the identifier before ``cursor``, from the engine's namespace (introspect.py).
        Answered only while no cell runs or waits: completion never queues behind a computation."""
        if self.lock.locked() or self.waiting:
            raise ProtocolError("busy", "the engine is running a cell: no completion until it is done")
        async with self.lock:
            if self.restore_error is not None:
                raise ProtocolError("restore_failed", self.restore_error)
            if not self.alive or self.proc is None:
                raise ProtocolError("session_dead", f"the session's engine is not running ({self.death})")
            frame = {"type": "complete", "id": req_id, "code": code, "cursor": cursor, "engine": engine}
            ex, result = await self._engine_call(
                conn, req_id, frame, COMPLETE_SECONDS, self._complete_timeout
            )
        if result.get("status") != "ok":
            raise ProtocolError("timeout" if ex.limit else "session_dead", str(result.get("message")))
        matches = result.get("matches")
        if not isinstance(matches, list):
            matches = []
        start, end = result.get("start"), result.get("end")
        return {
            "type": "completions",
            "session": self.id,
            "matches": [str(m)[:200] for m in matches[:MAX_MATCHES]],
            "start": start if isinstance(start, int) else cursor,
            "end": end if isinstance(end, int) else cursor,
        }

    def _complete_timeout(self, ex: Execution) -> None:
        if self.current is ex:
            ex.limit = "walltime"
            self._interrupt_then_kill(ex)

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
            quota, max_inodes = self.limits.disk_quota_mb << 20, self.limits.disk_inodes
            try:
                if self.worker.volumes is not None:  # its own filesystem: the kernel enforces, we look
                    used, free, _, free_inodes = await asyncio.to_thread(
                        self.worker.volumes.usage, self.workspace
                    )
                    over = free < 65536 or free_inodes == 0
                else:  # measured: the checkout and the private temporary directories, as the user
                    res = await self.op("du", {})
                    used, inodes = res["bytes"], res.get("inodes", 0)
                    over = used > quota or inodes > max_inodes
            except (OpError, ProtocolError, OSError) as exc:
                log.warning("quota check of %s failed: %s", self.workspace, exc)
                return
        finally:
            self.quota_pending = False
            if self.quota_dirty and self.id in self.worker.sessions:
                self.schedule_quota_check(now=True)
        was = self.over_quota
        self.over_quota = over
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
        """Run a file/git operation in a helper fork as the workspace user. Helpers are shared fairly
        between sessions (``Worker.helpers``); a session with too many waiting gets ``busy``."""
        try:
            async with self.worker.helpers.slot(self.id):
                if self.killing is not None and not self.killing.done():
                    await self.killing  # a helper started now would be killed with the uid's processes
                return await run_as(
                    self.account,
                    self.root,
                    self.tmp,
                    op,
                    args,
                    fsize=self.limits.file_size_mb << 20,
                    max_bytes=int(self.worker.config.max_frame * 0.7),
                    forker=self.worker.forker,
                    mounts=private_mounts(str(self.tmp)) if self.worker.isolated else None,
                )
        except QueueFull as exc:
            raise ProtocolError("busy", str(exc)) from None

    async def settled(self) -> None:
        """Wait for a background checkout; refuse to work on a workspace whose restore failed."""
        if self.checkout is not None and not self.checkout.done():
            await asyncio.shield(self.checkout)
        if self.restore_error is not None:
            raise ProtocolError("restore_failed", self.restore_error)

    async def close(self) -> None:
        if self.idle_handle is not None:
            self.idle_handle.cancel()
        for term in list(self.terminals.values()):
            term.close()
        await self.docs.close()  # the last text of each shared document reaches the checkout
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
        await self.kill_all()
        await asyncio.to_thread(shutil.rmtree, self.tmp, True)
        await asyncio.to_thread(purge_uid_files, self.account.uid)
        if self.worker.cgroups is not None:
            self.worker.cgroups.remove(self.workspace)
