"""Terminals of a session: a pty on the worker whose shell is confined like the session's engine.

The worker opens the pty pair itself (two syscalls, no fork) and hands the slave to the helper
forker, which forks the terminal's keeper and shell (sagews/worker/terminal_child.py): the shell
joins the engine's PID, IPC and mount namespaces and cgroup and runs as the workspace user with the
engine's rlimits, so it sees what the engine sees and dies with the engine's namespace (a `restart`
ends its terminals). The worker reads the pty's master with ``loop.add_reader`` (never blocking):

* output is read at most at ``OUTPUT_RATE`` bytes/s after a burst of ``OUTPUT_BURST`` (a token
  bucket per terminal); past it the master is not read until the bucket refills, so a flood (``yes``)
  blocks its writer in the kernel instead of costing the worker a core or the clients a flood;
* the last ``SCROLLBACK`` characters are kept for a reattach (``term_attach`` replays them);
* input is written without blocking (``MAX_PENDING_INPUT`` bytes may wait for the shell to read).

Every connection attached to a terminal gets its ``term_output`` and ``term_exit`` frames; a
terminal lives until its shell exits, ``term_close``, or the session ends, not as long as a client
stays attached. Protocol: docs/protocol-worker.md, "Terminals".
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import fcntl
import itertools
import json
import logging
import os
import signal
import struct
import termios
import time
from typing import TYPE_CHECKING, Any

from sagews.worker.pipes import PipeReader
from sagews.worker.protocol import CHUNK, ProtocolError
from sagews.worker.terminal_child import shell_path

if TYPE_CHECKING:
    from sagews.worker.connection import Connection
    from sagews.worker.session import Session

log = logging.getLogger("sagews.worker")

MAX_TERMINALS = 8  # per session
SCROLLBACK = 65536  # characters kept for a reattach's replay
OUTPUT_RATE = 512 * 1024  # bytes a second read from one terminal's pty ...
OUTPUT_BURST = 1 << 20  # ... after this many at once
MAX_INPUT = 65536  # characters in one term_input
MAX_PENDING_INPUT = 1 << 20  # bytes of input waiting for the shell to read them
MAX_ROWS, MAX_COLS = 500, 1000
START_TIMEOUT = 15.0
_ids = itertools.count(1)


def check_size(rows: object, cols: object) -> tuple[int, int]:
    for name, value, top in (("rows", rows, MAX_ROWS), ("cols", cols, MAX_COLS)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
            raise ProtocolError("bad_field", f"{name} must be an integer from 1 to {top}")
    return int(rows), int(cols)  # type: ignore[arg-type]


def describe_exit(status: int | None) -> str:
    if status is None:
        return "the terminal's process ended"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        return f"killed by {name}"
    return f"exited with code {os.WEXITSTATUS(status)}"


class Terminal:
    def __init__(self, session: Session, master: int, rows: int, cols: int) -> None:
        self.session = session
        self.id = f"t{next(_ids)}"
        self.master = master
        self.rows, self.cols = rows, cols
        self.pid = 0  # the shell, as the worker sees it
        self.subscribers: set[Connection] = set()
        self.scroll = ""
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.tokens = float(OUTPUT_BURST)
        self.stamp = time.monotonic()
        self.reading = False
        self.resume: asyncio.TimerHandle | None = None
        self.pending = bytearray()
        self.writing = False
        self.lifeline: int | None = None  # closing it makes the keeper end the terminal
        self.watcher: asyncio.Task[None] | None = None
        self.alive = True
        self.started = time.time()
        self.output_bytes = 0
        self.throttled = 0  # how often the rate limit stopped reading

    def info(self) -> dict[str, Any]:
        return {"terminal": self.id, "rows": self.rows, "cols": self.cols, "alive": self.alive,
                "started": self.started, "attached": len(self.subscribers)}  # fmt: skip

    # output --------------------------------------------------------------------------------------
    def _start_reading(self) -> None:
        if not self.reading and self.master >= 0:
            self.reading = True
            asyncio.get_running_loop().add_reader(self.master, self._on_readable)

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.master)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.master, CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: no process holds the slave any more
            data = b""
        if not data:
            self._stop_reading()
            return
        self.output_bytes += len(data)
        if self.subscribers:  # someone watches it: the session is in use (no idle close)
            self.session.last_activity = time.monotonic()
        self._spend(len(data))
        text = self.decoder.decode(data)
        if text:
            self.scroll = (self.scroll + text)[-SCROLLBACK:]
            self.broadcast({"type": "term_output", "data": text})

    def _spend(self, n: int) -> None:
        now = time.monotonic()
        self.tokens = min(float(OUTPUT_BURST), self.tokens + (now - self.stamp) * OUTPUT_RATE) - n
        self.stamp = now
        if self.tokens < 0:
            self.throttled += 1
            self._stop_reading()
            self.resume = asyncio.get_running_loop().call_later(-self.tokens / OUTPUT_RATE, self._resumed)

    def _resumed(self) -> None:
        self.resume = None
        if self.alive:
            self._start_reading()

    def broadcast(self, frame: dict[str, Any]) -> None:
        frame = {**frame, "session": self.session.id, "terminal": self.id}
        for conn in list(self.subscribers):
            if conn.closed:
                self.subscribers.discard(conn)
            else:
                conn.send(frame)

    # input ---------------------------------------------------------------------------------------
    def write(self, data: str) -> None:
        if not self.alive or self.master < 0:
            raise ProtocolError("not_found", "the terminal has ended")
        raw = data.encode("utf-8", "replace")
        if len(self.pending) + len(raw) > MAX_PENDING_INPUT:
            raise ProtocolError("busy", f"{MAX_PENDING_INPUT} bytes of input already wait for the shell")
        self.pending += raw
        self._flush()

    def _flush(self) -> None:
        while self.pending:
            try:
                n = os.write(self.master, self.pending)
            except BlockingIOError:
                break
            except OSError as exc:
                log.info("terminal %s: input dropped (%s)", self.id, exc)
                self.pending.clear()
                break
            del self.pending[:n]
        loop = asyncio.get_running_loop()
        if self.pending and not self.writing:
            self.writing = True
            loop.add_writer(self.master, self._flush)
        elif not self.pending and self.writing:
            self.writing = False
            loop.remove_writer(self.master)

    def resize(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        if self.master >= 0:
            set_size(self.master, rows, cols)  # the kernel sends SIGWINCH to the foreground job

    # lifetime ------------------------------------------------------------------------------------
    async def _watch(self, pipe: PipeReader) -> None:
        status: int | None = None
        try:
            line = await pipe.reader.readline()
            if line:
                msg = json.loads(line)
                if "error" in msg:
                    log.warning("terminal %s of %s: %s", self.id, self.session.workspace, msg["error"])
                status = msg.get("exit")
        except (ValueError, OSError) as exc:
            log.warning("terminal %s: its keeper's answer was unreadable: %s", self.id, exc)
        finally:
            pipe.close()
        if self.reading and self.master >= 0:  # what the shell wrote last (the pipe is at EOF now)
            with contextlib.suppress(OSError):
                for _ in range(16):
                    self._on_readable()
                    if not self.reading:
                        break
        self._ended(status)

    def _ended(self, status: int | None) -> None:
        if not self.alive:
            return
        self.alive = False
        log.info("terminal %s of %s: %s", self.id, self.session.workspace, describe_exit(status))
        self.broadcast({"type": "term_exit", "status": status, "message": describe_exit(status)})
        self.subscribers.clear()
        self._release()
        self.session.terminals.pop(self.id, None)

    def _release(self) -> None:
        self._stop_reading()
        if self.resume is not None:
            self.resume.cancel()
        loop = asyncio.get_running_loop()
        if self.writing:
            self.writing = False
            with contextlib.suppress(Exception):
                loop.remove_writer(self.master)
        if self.master >= 0:
            os.close(self.master)  # the shell's session gets SIGHUP
            self.master = -1
        if self.lifeline is not None:
            os.close(self.lifeline)  # the keeper kills what is left of the terminal's session
            self.lifeline = None

    def close(self) -> None:
        """End the terminal: its keeper kills every process of the shell's session; ``term_exit``
        follows once the keeper has reaped the shell."""
        self._release()


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


async def open_terminal(session: Session, rows: int, cols: int) -> Terminal:
    """A new terminal in ``session``: pty, keeper and shell (terminal_child.py), confined like the
    session's engine. Raises ProtocolError."""
    if len(session.terminals) >= MAX_TERMINALS:
        raise ProtocolError("busy", f"a session has at most {MAX_TERMINALS} terminals")
    await session.settled()
    if not session.alive or session.proc is None:
        raise ProtocolError("session_dead", f"the session's engine is not running ({session.death})")
    worker = session.worker
    owned: list[int] = []  # descriptors of ours to close if the terminal does not start
    pipe: PipeReader | None = None
    try:
        master, slave = os.openpty()
        owned += [master, slave]
        os.set_blocking(master, False)
        set_size(master, rows, cols)
        os.fchown(slave, session.account.uid, session.account.gid)  # the user's own tty, like login's
        os.fchmod(slave, 0o600)
        ns: dict[str, int] = {}
        if worker.isolated:  # the engine's namespaces (it is alive: its pid is its own)
            for name in ("pid", "ipc", "mnt"):
                ns[name] = os.open(f"/proc/{session.engine_pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
                owned.append(ns[name])
        lifeline_read, lifeline = os.pipe()
        owned += [lifeline_read, lifeline]
        result, result_write = os.pipe()
        owned += [result, result_write]
        handed = {lifeline_read, result_write, slave, *ns.values()}
        owned = [fd for fd in owned if fd not in handed]  # Forker.terminal closes these, sent or not
        await worker.forker.terminal(lifeline_read, result_write, slave, ns)
        shell = shell_path()
        env = {**session.env(), "TERM": "xterm-256color", "COLORTERM": "truecolor", "SHELL": shell}
        args = {
            "uid": session.account.uid,
            "gid": session.account.gid,
            "cwd": str(session.root),
            "env": env,
            "limits": worker.config.limits.__dict__,
            "shell": shell,
            "cgroup": str(worker.cgroups.path(session.workspace)) if worker.cgroups is not None else None,
        }
        os.write(lifeline, json.dumps(args).encode() + b"\n")  # a few KiB into an empty pipe: no wait
        pipe = PipeReader(result)  # closed with it from here on (sagews/worker/pipes.py: not a transport)
        owned.remove(result)
        try:
            line = await asyncio.wait_for(pipe.reader.readline(), START_TIMEOUT)
            answer = json.loads(line) if line else {}
        except (TimeoutError, ValueError) as exc:
            answer = {"error": f"no answer ({type(exc).__name__})"}
        if "pid" not in answer:
            why = answer.get("error", "no answer")
            raise ProtocolError("engine_failed", f"the terminal did not start: {why}")
    except BaseException:
        if pipe is not None:
            pipe.close()
        for fd in owned:  # the lifeline among them: a keeper that did start ends the terminal
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
    term = Terminal(session, master, rows, cols)
    term.pid = int(answer["pid"])
    term.lifeline = lifeline
    session.terminals[term.id] = term
    term.watcher = asyncio.create_task(term._watch(pipe))
    term._start_reading()
    log.info("terminal %s opened in %s as %s (shell pid %d)", term.id, session.workspace,
             session.account.name, term.pid)  # fmt: skip
    return term
