"""The engine: what runs inside a session's forked child.

The zygote forks the child with fd 1 and 2 on pipes read by the server (user code's stdout and
stderr, also for subprocesses it starts) and a control socket (framed JSON, see
docs/protocol-worker.md "Engine channel"). The child waits (still root, engines pre-imported) for
``assign``: it then drops to the workspace's uid, chdirs into the checkout, applies rlimits and
answers ``ready``. After that it evaluates ``exec`` requests one at a time.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import ctypes
import io
import os
import resource
import signal
import socket
import sys
import tempfile
import time
from typing import Any

from sagews.framing import HEADER, FrameError, decode_body, encode
from sagews.worker import introspect, tracebacks  # here, not lazily: user code cannot import our modules

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
MAX_REPR = 100_000

# Filled by the zygote before forking (pre-imported engines).
PRELOADED: dict[str, Any] = {}


def preload(engines: list[str]) -> list[str]:
    """Import what engines need, once, in the zygote. Returns the engines that are available."""
    available = ["python"]
    if "sage" in engines:
        try:
            import sage.all__sagemath_symbolics as sage_all
            from sage.repl.preparse import preparse
        except ImportError:
            pass
        else:
            ns: dict[str, Any] = {}
            exec("from sage.all__sagemath_symbolics import *", ns)  # noqa: S102
            with contextlib.suppress(ImportError):  # plots: passagemath-plot (part of sagews[sage])
                exec("from sage.all__sagemath_plot import *", ns)  # noqa: S102
            PRELOADED["sage_ns"] = ns
            PRELOADED["preparse"] = preparse
            PRELOADED["sage_all"] = sage_all
            with contextlib.suppress(ImportError):  # `name?` help for Sage objects (introspect.py)
                import sage.misc.sageinspect  # noqa: F401
            with contextlib.suppress(Exception):  # Maxima's first call is slow: pay it here, once
                exec("integrate(x**2, x)", dict(ns, x=ns["var"]("x")))  # noqa: S102
            available.append("sage")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot
    except ImportError:
        pass
    return available


def _prctl(option: int, arg: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(option, arg, 0, 0, 0)


class Channel:
    """Blocking framed JSON on the control socket (the child is single-threaded)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def _exactly(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def recv(self) -> dict[str, Any]:
        (length,) = HEADER.unpack(self._exactly(HEADER.size))
        return decode_body(self._exactly(length))

    def send(self, msg: dict[str, Any]) -> None:
        self.sock.sendall(encode(msg))


def drop_privileges(msg: dict[str, Any]) -> tuple[int, int]:
    """Enter the workspace's private mounts (if isolated), apply rlimits, become the workspace user.
    Returns this process's pid and its namespace init's as the worker sees them (0: no namespace)."""
    uid, gid = int(msg["uid"]), int(msg["gid"])
    limits = msg["limits"]
    mb = 1 << 20
    host_pid, init_pid = os.getpid(), 0
    if msg.get("isolate"):
        from sagews.worker import isolation

        host_pid = int(os.readlink("/proc/self"))  # still the host's /proc: the pid the worker signals
        with open(f"/proc/{host_pid}/stat") as fh:
            init_pid = int(fh.read().rsplit(")", 1)[1].split()[1])  # our parent: PID 1
        isolation.enter_private_mounts([(str(a), str(b)) for a, b in msg.get("mounts", [])])

    def setl(res: int, soft: int, hard: int | None = None) -> None:
        resource.setrlimit(res, (soft, soft if hard is None else hard))

    setl(resource.RLIMIT_CPU, int(limits["cpu_seconds"]), int(limits["cpu_seconds"]) + 5)
    setl(resource.RLIMIT_AS, int(limits["address_space_mb"]) * mb)
    setl(resource.RLIMIT_NPROC, int(limits["processes"]))
    setl(resource.RLIMIT_FSIZE, int(limits["file_size_mb"]) * mb)
    setl(resource.RLIMIT_NOFILE, int(limits["open_files"]))
    setl(resource.RLIMIT_CORE, 0)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past RLIMIT_FSIZE fail with EFBIG instead
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise RuntimeError("privilege drop failed")
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # cleared by setuid, so set it after
    os.chdir(msg["cwd"])
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in msg["env"].items()})
    tempfile.tempdir = None  # the zygote's imports cached /tmp: use the session's private TMPDIR
    _retarget_sage_dirs()
    return host_pid, init_pid


SAGE_DOT_SAGE_MODULES = (
    "sage.env",
    "sage.misc.misc",
    "sage.misc.lazy_import_cache",
    "sage.misc.sageinspect",
    "sage.misc.inline_fortran",
    "sage.interfaces.expect",
    "sage.interfaces.gp",
    "sage.interfaces.maxima_abstract",
    "sage.interfaces.maxima_lib",
    "sage.all__sagemath_environment",
)


def _retarget_sage_dirs() -> None:
    """Sage read DOT_SAGE (root's ~/.sage) when the zygote imported it; point it at the session's."""
    env = sys.modules.get("sage.env")
    new = os.environ.get("DOT_SAGE")
    if env is None or not new:
        return
    old = getattr(env, "DOT_SAGE", None)
    os.makedirs(new, mode=0o700, exist_ok=True)
    if isinstance(getattr(env, "SAGE_ENV", None), dict):
        env.SAGE_ENV["DOT_SAGE"] = new
    for name in SAGE_DOT_SAGE_MODULES:  # the modules that copy DOT_SAGE at import (passagemath 10.8)
        namespace = getattr(sys.modules.get(name), "__dict__", None)
        if isinstance(namespace, dict) and namespace.get("DOT_SAGE") == old:
            namespace["DOT_SAGE"] = new


class Engine:
    def __init__(self, chan: Channel, engines: list[str]) -> None:
        self.chan = chan
        self.engines = engines
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.current: Any = None
        self.pending = b""
        self.cells = tracebacks.Cells()
        self.runaway_at = 0  # isolated: this many processes in our PID namespace after a cell = runaway

    # rich output -----------------------------------------------------------------------------
    def display(self, data: dict[str, str]) -> None:
        self.chan.send({"type": "display", "id": self.current, "data": data})

    def html(self, s: object) -> None:
        self.display({"text/html": str(s), "text/plain": str(s)})

    def show(self, obj: object, **kwargs: Any) -> None:
        data = self.rich(obj, **kwargs)
        if "text/latex" not in data and "image/png" not in data and "sage_ns" in PRELOADED:
            with contextlib.suppress(Exception):
                data["text/latex"] = str(PRELOADED["sage_ns"]["latex"](obj))
        self.display(data)

    def rich(self, obj: object, **kwargs: Any) -> dict[str, str]:
        data = {"text/plain": self.safe_repr(obj)}
        if hasattr(obj, "_repr_html_"):
            try:
                html = obj._repr_html_()
                if html:
                    data["text/html"] = str(html)
            except Exception:  # noqa: S110
                pass
        cls = type(obj).__name__
        if cls == "LatexExpr":
            data["text/latex"] = str(obj)
        if cls in {"Graphics", "GraphicsArray", "MultiGraphics"} or cls == "Figure":
            buf = io.BytesIO()
            try:
                if cls == "Figure":
                    obj.savefig(buf, format="png")  # type: ignore[attr-defined]
                else:
                    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "sagews_plot.png")  # noqa: S108
                    obj.save(path, **kwargs)  # type: ignore[attr-defined]
                    with open(path, "rb") as fh:
                        buf.write(fh.read())
                data["image/png"] = base64.b64encode(buf.getvalue()).decode()
            except Exception as exc:
                data["text/plain"] += f"\n(could not render plot: {exc})"
        return data

    @staticmethod
    def safe_repr(obj: object) -> str:
        try:
            text = repr(obj)
        except Exception as exc:
            text = f"<repr failed: {type(exc).__name__}: {exc}>"
        if len(text) > MAX_REPR:
            text = text[:MAX_REPR] + f"... [repr cut at {MAX_REPR} characters]"
        return text

    def flush_figures(self) -> None:
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None:
            return
        for num in plt.get_fignums():
            fig = plt.figure(num)
            buf = io.BytesIO()
            fig.savefig(buf, format="png")
            self.display({"image/png": base64.b64encode(buf.getvalue()).decode(), "text/plain": repr(fig)})
        plt.close("all")

    # namespaces ------------------------------------------------------------------------------
    def namespace(self, engine: str) -> dict[str, Any]:
        ns = self.namespaces.get(engine)
        if ns is None:
            ns = dict(PRELOADED["sage_ns"]) if engine == "sage" else {}
            ns.update({"__name__": "__main__", "__builtins__": __builtins__})
            ns["show"] = self.show
            ns["html"] = self.html
            self.namespaces[engine] = ns
        return ns

    # execution -------------------------------------------------------------------------------
    def run(self, msg: dict[str, Any]) -> None:
        self.current = msg.get("id")
        engine = msg.get("engine", "python")
        status = "ok"
        # SIGINT stays blocked outside user code (so the handler, Python's or cysignals' for Sage, which
        # also interrupts C code such as PARI, is never replaced); a stale one is consumed first.
        if signal.SIGINT in signal.sigpending():
            signal.sigwait({signal.SIGINT})
        try:
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
                status = self._run(str(msg.get("code", "")), engine)
            except KeyboardInterrupt:
                status = "interrupted"
                self.exception(*sys.exc_info())
            finally:
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            status = str(status)  # a handler that tripped just before blocking raises here at the latest
        except KeyboardInterrupt:
            status = "interrupted"
        self.stop_runaway()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: S110
            pass
        done = encode({"type": "done", "id": self.current, "status": status})
        self.chan.sock.sendall(self.pending + done)  # one write: result and done together
        self.pending = b""

    def complete(self, msg: dict[str, Any]) -> None:
        """Completion of the name before ``cursor`` in the cell's namespace (introspect.py), answered
        as a ``done`` with ``matches``, ``start`` and ``end``; SIGINT (the worker's time limit) is
        open while a user's ``__dir__``/``__getattr__`` runs."""
        self.current = msg.get("id")
        reply: dict[str, Any] = {"type": "done", "id": self.current, "status": "ok"}
        if signal.SIGINT in signal.sigpending():
            signal.sigwait({signal.SIGINT})
        try:
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
                ns = self.namespace(str(msg.get("engine", "python")))
                code, cursor = str(msg.get("code", "")), int(msg.get("cursor", 0))
                matches, start, end = introspect.complete(ns, code, cursor)
                reply.update(matches=matches, start=start, end=end)
            finally:
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        except KeyboardInterrupt:
            reply.update(status="interrupted", message="completion interrupted (time limit)")
        except Exception as exc:  # a broken object completes nothing
            reply.update(matches=[], start=0, end=0, note=f"{type(exc).__name__}"[:100])
        self.chan.send(reply)

    def stop_runaway(self) -> None:
        """A cell that leaves the workspace at its process limit left a runaway (a fork bomb): kill
        every other process of the namespace (kill(-1) from here reaches exactly those; its init is
        root's). Below the limit, background processes keep running between cells."""
        if not self.runaway_at:
            return
        try:
            count = sum(1 for p in os.listdir("/proc") if p.isdigit())
        except OSError:
            return
        if count < self.runaway_at:
            return
        try:
            os.kill(-1, signal.SIGKILL)
            time.sleep(0.05)  # let them die, then reap our own children among them (not zombies)
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except OSError:  # ChildProcessError: none left
            pass
        print(
            f"\n[sagews: the workspace was at its process limit after this cell: its {count - 2} other "
            "processes were killed]",
            file=sys.stderr,
        )

    def exception(self, etype: Any, value: Any, tb: Any) -> None:
        ename, evalue, text = tracebacks.format_exception(etype, value, tb, __file__)
        self.chan.send(
            {"type": "exception", "id": self.current, "ename": ename, "evalue": evalue, "traceback": text}
        )

    def _run(self, code: str, engine: str) -> str:
        ns = self.namespace(engine)
        asked = introspect.help_request(code)
        if asked is not None:  # `name?` / `name??`: help from this namespace, shown as output
            name, source = asked  # sagews/worker/introspect.py
            self.display({"text/plain": introspect.help_text(ns, name, source, engine == "sage")})
            return "ok"
        source, filename = code, self.cells.register(code)
        try:
            if engine == "sage":
                code = PRELOADED["preparse"](code)
            tree = ast.parse(code, filename, "exec")
        except Exception:  # SyntaxError, ValueError (NUL bytes), anything the preparser raises
            etype, value, tb = sys.exc_info()
            if value is not None:
                tracebacks.fix_syntax_error(value, filename, source)
            self.exception(etype, value, tb)
            return "error"
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)  # type: ignore[attr-defined]
        try:
            # dont_inherit: user code must not get this module's `from __future__ import annotations`
            exec(compile(tree, filename, "exec", dont_inherit=True), ns)  # noqa: S102
            if last is not None:
                value = eval(compile(last, filename, "eval", dont_inherit=True), ns)  # noqa: S307
                if value is not None:
                    ns["_"] = value
                    self.pending = encode({"type": "result", "id": self.current, "data": self.rich(value)})
            self.flush_figures()
        except KeyboardInterrupt:
            raise
        except BaseException:
            self.exception(*sys.exc_info())
            return "error"
        return "ok"


def child_main(ctrl_fd: int, engines: list[str]) -> None:
    """Entry in the forked child; never returns."""
    code = 0
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # inherited from the zygote already
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.set_inheritable(ctrl_fd, False)  # programs started by user code do not get the control socket
        chan = Channel(socket.socket(fileno=ctrl_fd))
        msg = chan.recv()
        if msg.get("type") != "assign":
            os._exit(3)
        try:
            host_pid, init_pid = drop_privileges(msg)
        except Exception as exc:
            chan.send({"type": "failed", "message": f"{type(exc).__name__}: {exc}"})
            os._exit(4)
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        sys.stdin = open(os.devnull)  # noqa: SIM115
        engine = Engine(chan, engines)
        if msg.get("isolate"):
            engine.runaway_at = max(3, int(msg["limits"]["processes"]) - 4)
        chan.send({"type": "ready", "pid": host_pid, "init": init_pid, "uid": os.getuid()})
        while True:
            msg = chan.recv()
            if msg.get("type") == "exec":
                try:
                    engine.run(msg)
                except Exception as exc:  # a bug of ours must not take the session down silently
                    chan.send(
                        {"type": "done", "id": msg.get("id"), "status": "error", "message": repr(exc)[:500]}
                    )
            elif msg.get("type") == "complete":
                engine.complete(msg)
            elif msg.get("type") == "quit":
                break
    except (EOFError, OSError, FrameError):
        code = 1
    os._exit(code)
