"""Execution: results, streams, errors, rich output, interrupt, kill/restart, engines."""

from __future__ import annotations

import base64
import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest
from worker_helpers import HAVE_SAGE, WorkerProc

from sagews.worker.client import WorkerClient, WorkerError

PNG = b"\x89PNG"


def test_hello_and_status(client: WorkerClient) -> None:
    assert client.hello is not None
    assert client.hello["version"] == 1
    assert client.hello["peer"] == "backend"
    st = client.request("status")
    assert st["version"]
    assert "python" in st["engines"]
    assert st["mem_available"] > 0
    assert len(st["load"]) == 3


def test_status_lists_sessions(client: WorkerClient, session: str) -> None:
    client.execute(session, "1")
    entry = next(s for s in client.request("status")["session_list"] if s["session"] == session)
    assert entry["alive"] is True
    assert entry["executions"] >= 1
    assert entry["user"].startswith("sagews_")


def test_result_stdout_stderr(client: WorkerClient, session: str) -> None:
    r = client.execute(session, "import sys\nprint('out')\nprint('err', file=sys.stderr)\nx = 20\nx + 22")
    assert r["stdout"] == "out\n"
    assert r["stderr"] == "err\n"
    assert r["result"]["text/plain"] == "42"
    assert r["done"]["status"] == "ok"
    # state persists between cells; a trailing statement gives no result
    r = client.execute(session, "y = x * 2")
    assert r["result"] is None
    assert client.execute(session, "y")["result"]["text/plain"] == "40"


def test_exception_traceback(client: WorkerClient, session: str) -> None:
    r = client.execute(session, "def f():\n    return 1/0\nf()")
    assert r["done"]["status"] == "error"
    exc = r["exception"]
    assert exc["ename"] == "ZeroDivisionError"
    assert "line 2, in f" in exc["traceback"]
    assert "engine.py" not in exc["traceback"]
    # the user's own lines, also of a function defined in an earlier cell; the last line once
    r = client.execute(session, "x = 1\nf()")
    tb = r["exception"]["traceback"]
    assert "    f()\n" in tb and "    return 1/0\n" in tb, tb
    assert tb.count("ZeroDivisionError: division by zero") == 1 and tb.endswith("division by zero\n"), tb
    # library frames by their package path, not the server's install layout
    tb = client.execute(session, "import json\njson.loads('{')")["exception"]["traceback"]
    assert "json/decoder.py" in tb and "site-packages" not in tb and sys.prefix not in tb, tb
    r = client.execute(session, "assert 1 == 2")
    assert r["exception"]["evalue"] == "" and r["exception"]["traceback"].endswith("AssertionError\n")
    r = client.execute(session, "def (:")
    assert r["exception"]["ename"] == "SyntaxError"
    r = client.execute(session, "1\x00")
    assert r["exception"]["ename"] in {"SyntaxError", "ValueError"}
    assert client.execute(session, "'alive'")["result"]["text/plain"] == "'alive'"


def test_streams_arrive_before_done(client: WorkerClient, session: str) -> None:
    client.send(
        {
            "type": "exec",
            "id": "s1",
            "session": session,
            "code": "import time\nprint('first', flush=True)\ntime.sleep(0.6)\nprint('second')",
        }
    )
    seen = []
    while True:
        msg = client.recv()
        assert msg is not None
        seen.append((time.monotonic(), msg))
        if msg["type"] == "done":
            break
    first = next(t for t, m in seen if m["type"] == "stream" and "first" in m["text"])
    done = seen[-1][0]
    assert done - first > 0.3, "the first line was not streamed before the cell finished"
    assert all(m["re"] == "s1" for _, m in seen)


def test_rich_html_and_show(client: WorkerClient, session: str) -> None:
    r = client.execute(session, "html('<b>hi</b>')")
    assert r["display"][0]["text/html"] == "<b>hi</b>"

    r = client.execute(session, "class T:\n    def _repr_html_(self): return '<i>t</i>'\nT()")
    assert r["result"]["text/html"] == "<i>t</i>"


def test_matplotlib_png(client: WorkerClient, session: str) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed (it comes with sagews[sage])")
    r = client.execute(session, "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nNone")
    assert r["done"]["status"] == "ok", r
    assert base64.b64decode(r["display"][0]["image/png"]).startswith(PNG)


def test_interrupt_keeps_session(worker: WorkerProc, client: WorkerClient, session: str) -> None:
    client.execute(session, "keep = 7")
    client.send(
        {
            "type": "exec",
            "id": "loop",
            "session": session,
            "code": "print('go', flush=True)\nwhile True:\n    pass",
        }
    )
    started = client.recv()  # the loop is running once 'go' arrives
    assert started is not None
    assert started["type"] == "stream"
    with worker.client() as other:
        other.request("interrupt", session=session)
    frames = [started]
    while frames[-1] is not None and frames[-1]["type"] != "done":
        frames.append(client.recv())
    assert frames[-1] is not None
    assert frames[-1]["status"] == "interrupted"
    assert any(f and f["type"] == "exception" and f["ename"] == "KeyboardInterrupt" for f in frames)
    assert client.execute(session, "keep")["result"]["text/plain"] == "7"


def test_kill_and_restart(client: WorkerClient, session: str) -> None:
    client.execute(session, "z = 1")
    client.request("kill", session=session)
    with pytest.raises(WorkerError) as ei:
        for _ in range(100):  # the engine's death is noticed asynchronously
            client.execute(session, "1")
            time.sleep(0.02)
    assert ei.value.code == "session_dead"
    client.request("restart", session=session)
    r = client.execute(session, "'z' in globals(), 2 + 2")
    assert r["result"]["text/plain"] == "(False, 4)"


def test_reopen_returns_same_session(client: WorkerClient) -> None:
    first = client.request("open", workspace="reopen-ws")
    again = client.request("open", workspace="reopen-ws")
    assert again["session"] == first["session"]
    assert again["existing"] is True
    client.request("close", session=first["session"])
    with pytest.raises(WorkerError) as ei:
        client.request("exec", session=first["session"], code="1")
    assert ei.value.code == "no_session"


def test_sage_not_installed(make_worker: object, base_dir: Path) -> None:
    """A worker whose Python cannot import Sage (a stand-in `sage` package that fails to import)."""
    fake = base_dir / "no-sage"
    (fake / "sage").mkdir(parents=True)
    (fake / "sage" / "__init__.py").write_text("raise ImportError('no Sage here')\n")
    env = {"PYTHONPATH": f"{fake}:{os.environ.get('PYTHONPATH', '')}"}
    w: WorkerProc = make_worker(engines=["python", "sage"], warm_pool=0, env=env)  # type: ignore[operator]
    with w.client() as c:
        assert c.hello is not None
        assert c.hello["engines"] == ["python"]
        with pytest.raises(WorkerError) as ei:
            c.request("open", workspace="nosage", engine="sage")
        assert ei.value.code == "engine_unavailable"
        assert "Sage is not installed on this worker" in ei.value.reply["message"]
        sid = c.request("open", workspace="nosage")["session"]
        assert c.execute(sid, "1+1")["result"]["text/plain"] == "2"
        with pytest.raises(WorkerError) as ei:
            c.execute(sid, "1+1", engine="sage")
        assert ei.value.code == "engine_unavailable"


def test_help_from_the_engine(client: WorkerClient, session: str) -> None:
    """`name?` shows the signature and docstring of the namespace's object, `name??` its source."""
    code = 'def area(r: float) -> float:\n    "The area of a disc of radius r."\n    return 3*r*r'
    client.execute(session, code)
    r = client.execute(session, "area?")
    text = r["display"][0]["text/plain"]
    assert r["done"]["status"] == "ok" and "Signature: area(r: float) -> float" in text, text
    assert "The area of a disc of radius r." in text
    assert "return 3*r*r" in client.execute(session, "area??")["display"][0]["text/plain"]
    assert "not found" in client.execute(session, "nosuchname?")["display"][0]["text/plain"]
    assert "Return the number of items" in client.execute(session, "len?")["display"][0]["text/plain"]


@pytest.mark.sage
def test_sage_engine(client: WorkerClient) -> None:
    if not HAVE_SAGE:
        pytest.skip("Sage is not installed: pip install -e '.[sage]'")
    sid = client.request("open", workspace="sage-ws", engine="sage")["session"]
    try:
        r = client.execute(sid, "factor(2^64-1)")
        assert r["result"]["text/plain"] == "3 * 5 * 17 * 257 * 641 * 65537 * 6700417"
        r = client.execute(sid, "R.<x> = QQ[]\n(x^2 - 1).factor()")
        assert r["result"]["text/plain"] == "(x - 1) * (x + 1)"
        r = client.execute(sid, "var('y')\nintegrate(y^2, y)")
        assert r["result"]["text/plain"] == "1/3*y^3"
        r = client.execute(sid, "latex(y^2)")
        assert r["result"]["text/latex"] == "y^{2}"
        # tracebacks show the cell as typed (not preparsed); help comes from Sage's own docs
        tb = client.execute(sid, "a = 2^3\n1/0")["exception"]["traceback"]
        assert "    1/0\n" in tb and "Integer(" not in tb, tb
        err = client.execute(sid, "y = 1 +* 2")["exception"]
        assert err["ename"] == "SyntaxError" and "y = 1 +* 2" in err["traceback"], err
        doc = client.execute(sid, "factor?")["display"][0]["text/plain"]
        assert "Signature: factor(n" in doc and "factorization" in doc.lower(), doc[:500]
        r = client.execute(sid, "show(y^3)")
        assert r["display"][0]["text/latex"] == "y^{3}"
        # per-cell engine choice: plain Python semantics in the same session
        assert client.execute(sid, "2^3", engine="python")["result"]["text/plain"] == "1"
        assert client.execute(sid, "2^3")["result"]["text/plain"] == "8"
        # interrupting C code (PARI) works through cysignals, and the session survives
        client.send(
            {"type": "exec", "id": "long", "session": sid, "code": "print(1, flush=True)\nfactor(2^997 - 1)"}
        )
        assert client.recv()["type"] == "stream"  # type: ignore[index]  # the cell is running
        time.sleep(0.3)  # most likely inside PARI by now (an earlier interrupt is fine too)
        client.send({"type": "interrupt", "id": "int", "session": sid})
        frames = []
        while not frames or frames[-1].get("re") != "long" or frames[-1]["type"] != "done":
            frames.append(client.recv())
        assert frames[-1]["status"] == "interrupted", frames
        assert client.execute(sid, "2^4")["result"]["text/plain"] == "16"
        if "plot" in client.execute(sid, "'plot' in globals() and 'plot'")["result"]["text/plain"]:
            r = client.execute(sid, "plot(sin(y), (y, 0, 3))")
            assert base64.b64decode(r["result"]["image/png"]).startswith(PNG)
            r = client.execute(sid, "show(plot(y^2, (y, -1, 1)))")
            assert base64.b64decode(r["display"][0]["image/png"]).startswith(PNG)
    finally:
        client.call("close", session=sid)


def test_restart_during_execution(worker: WorkerProc, client: WorkerClient, session: str) -> None:
    code = "print('go', flush=True)\nimport time\ntime.sleep(60)"
    client.send({"type": "exec", "id": "forever", "session": session, "code": code})
    started = client.recv()
    assert started is not None
    assert started["type"] == "stream"
    with worker.client() as other:
        other.request("restart", session=session)
    done = client.recv()
    while done is not None and done["type"] != "done":
        done = client.recv()
    assert done is not None
    assert done["re"] == "forever"
    assert done["status"] == "died"
    assert client.execute(session, "1 + 1")["result"]["text/plain"] == "2"


def test_interrupt_while_idle_is_harmless(client: WorkerClient, session: str) -> None:
    client.request("interrupt", session=session)
    client.request("interrupt", session=session)
    r = client.execute(session, "import time\ntime.sleep(0.2)\n'fine'")
    assert r["done"]["status"] == "ok"
    assert r["result"]["text/plain"] == "'fine'"


def test_subprocess_output_is_streamed(client: WorkerClient, session: str) -> None:
    r = client.execute(session, "import os, subprocess\nos.system('echo from-shell; echo oops >&2')\nNone")
    assert "from-shell" in r["stdout"]
    assert "oops" in r["stderr"]
    r = client.execute(session, "import os\nos.system('readlink /proc/$$/fd/3 || echo none')\nNone")
    assert "socket" not in r["stdout"]  # the engine's control socket is not inherited
    assert "none" in r["stdout"]


@pytest.mark.sage
def test_sage_uses_the_session_dirs(client: WorkerClient) -> None:
    if not HAVE_SAGE:
        pytest.skip("Sage is not installed: pip install -e '.[sage]'")
    opened = client.request("open", workspace="sage-dirs", engine="sage")
    try:
        r = client.execute(
            opened["session"], "import sage.env, tempfile\n(sage.env.DOT_SAGE, tempfile.gettempdir())"
        )
        dot_sage, tmp = eval(r["result"]["text/plain"])  # noqa: S307
        assert opened["user"] in dot_sage
        assert tmp.endswith(f"{opened['user']}/tmp")  # the private /tmp (same directory)
    finally:
        client.call("close", session=opened["session"])
