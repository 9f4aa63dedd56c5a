"""Terminals and completion on a real worker (root, TLS, forks, pool users, namespaces)."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from worker_helpers import HAVE_SAGE, WorkerProc

from sagews.worker import terminal as term_mod
from sagews.worker.client import WorkerClient, WorkerError


class Screen:
    """The output of one terminal as a client sees it (term_output frames, in order)."""

    def __init__(self, client: WorkerClient, session: str, terminal: str) -> None:
        self.client, self.session, self.terminal = client, session, terminal
        self.text = ""
        self.exit: dict[str, Any] | None = None
        self.frames = 0

    def _take(self, msg: dict[str, Any]) -> bool:
        if msg.get("terminal") != self.terminal:
            return False
        if msg["type"] == "term_output":
            self.text += msg["data"]
            self.frames += 1
        elif msg["type"] == "term_exit":
            self.exit = msg
        return True

    def pump(self, until: float) -> None:
        """Read frames until ``until`` (monotonic) or the condition checks pass."""
        self.client.pending = [m for m in self.client.pending if not self._take(m)]
        self.client.sock.settimeout(max(0.01, until - time.monotonic()))
        try:
            msg = self.client.recv()
        except TimeoutError:
            return
        finally:
            self.client.sock.settimeout(60)
        if msg is not None and not self._take(msg):
            self.client.pending.append(msg)

    def wait(self, pattern: str, timeout: float = 15) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.text)
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not in the terminal's output: {self.text[-2000:]!r}")
            self.pump(deadline)

    def type(self, data: str) -> None:
        self.client.request("term_input", session=self.session, terminal=self.terminal, data=data)


def open_term(client: WorkerClient, session: str, rows: int = 24, cols: int = 80) -> Screen:
    r = client.request("term_open", session=session, rows=rows, cols=cols)
    assert r["type"] == "term_opened" and r["alive"] and r["rows"] == rows, r
    return Screen(client, session, r["terminal"])


def test_terminal_runs_as_the_workspace_user_with_its_limits(
    worker: WorkerProc, client: WorkerClient, session: str
) -> None:
    """The shell is the pool user, with the engine's rlimits, in the engine's PID namespace."""
    user = client.request("status")["session_list"]
    user = next(s["user"] for s in user if s["session"] == session)
    scr = open_term(client, session)
    scr.type("echo $USER; ulimit -a; echo UID=$(id -u) NPROC=$(ls /proc | grep -c '^[0-9]') END\n")
    m = scr.wait(r"UID=(\d+) NPROC=(\d+) END")
    assert f"{user}\r\n" in scr.text, scr.text  # echo's line (the prompt has user@host)
    assert int(m.group(1)) >= 1000 and int(m.group(1)) != 0
    limits = worker.config["limits"]
    assert re.search(rf"max user processes\s+\(-u\) {limits['processes']}\b", scr.text), scr.text
    assert re.search(rf"file size\s+\(blocks, -f\) {limits['file_size_mb'] * 1024}\b", scr.text), scr.text
    assert re.search(r"open files\s+\(-n\) 256\b", scr.text), scr.text
    assert re.search(r"virtual memory\s+\(kbytes, -v\) 4194304\b", scr.text), scr.text
    # the engine's PID namespace: a handful of processes (init, engine, shell, ls, ...), not the host's
    assert int(m.group(2)) < 12, scr.text
    # the engine sees the shell: the same namespace, from the other side
    ps = client.execute(session, "import os; print(sorted(open(f'/proc/{p}/comm').read().strip() "
                        "for p in os.listdir('/proc') if p.isdigit()))")  # fmt: skip
    assert "bash" in ps["stdout"] or "sh" in ps["stdout"], ps
    # the same private /tmp as the engine
    client.execute(session, "open('/tmp/from-engine', 'w').write('seen')")
    scr.type("cat /tmp/from-engine; echo; echo CAT-DONE\n")
    scr.wait(r"seen\r?\nCAT-DONE")
    client.request("term_close", session=session, terminal=scr.terminal)
    deadline = time.monotonic() + 10
    while scr.exit is None and time.monotonic() < deadline:
        scr.pump(deadline)
    assert scr.exit is not None and scr.exit["type"] == "term_exit", scr.text[-500:]


def test_resize_and_second_terminal(client: WorkerClient, session: str) -> None:
    a = open_term(client, session, rows=24, cols=80)
    b = open_term(client, session, rows=30, cols=100)
    assert a.terminal != b.terminal
    a.type("stty size; echo A-$$-END\n")
    b.type("stty size; echo B-$$-END\n")
    a.wait(r"24 80")
    b.wait(r"30 100")
    pid_a, pid_b = a.wait(r"A-(\d+)-END").group(1), b.wait(r"B-(\d+)-END").group(1)
    assert pid_a != pid_b
    client.request("term_resize", session=session, terminal=a.terminal, rows=40, cols=132)
    a.type("stty size\n")
    a.wait(r"40 132")
    listed = client.request("term_list", session=session)["terminals"]
    assert {t["terminal"] for t in listed} >= {a.terminal, b.terminal}
    for bad in ({"rows": 0, "cols": 80}, {"rows": 24, "cols": "x"}, {"rows": 10**9, "cols": 80}):
        with pytest.raises(WorkerError) as exc:
            client.request("term_resize", session=session, terminal=a.terminal, **bad)
        assert exc.value.reply["code"] == "bad_field"
    with pytest.raises(WorkerError) as exc:
        client.request("term_input", session=session, terminal="nope", data="x")
    assert exc.value.reply["code"] == "not_found"


def test_reattach_replays_scrollback(worker: WorkerProc, client: WorkerClient, session: str) -> None:
    """A terminal outlives its client's connection; a new connection reattaches by id and gets the
    last SCROLLBACK characters."""
    first = worker.client()
    scr = open_term(first, session)
    scr.type("for i in $(seq 1 9000); do echo line-$i; done; echo DONE-1\n")
    scr.wait(r"\nDONE-1\r?\n")
    first.close()
    with worker.client() as other:
        r = other.request("term_attach", session=session, terminal=scr.terminal)
        assert r["type"] == "term_attached"
        assert len(r["replay"]) <= term_mod.SCROLLBACK
        assert "DONE-1" in r["replay"] and "line-9000" in r["replay"] and "line-1\r" not in r["replay"]
        again = Screen(other, session, scr.terminal)
        again.type("echo still-$((6*7))\n")
        again.wait("still-42")


def test_output_flood_is_rate_limited(client: WorkerClient, session: str) -> None:
    """`yes` in a terminal: the worker reads at most OUTPUT_BURST + OUTPUT_RATE * t bytes."""
    scr = open_term(client, session)
    scr.type("yes\n")
    t0 = time.monotonic()
    scr.wait("y\r\ny\r\n")
    while time.monotonic() - t0 < 3:
        scr.pump(t0 + 3)
    elapsed = time.monotonic() - t0
    got = len(scr.text.encode())
    bound = term_mod.OUTPUT_BURST + term_mod.OUTPUT_RATE * elapsed + 65536
    print(f"flood: {got} bytes in {elapsed:.2f} s ({got / elapsed / 1024:.0f} KiB/s), bound {bound:.0f}")
    assert got <= bound, (got, bound)
    assert got >= term_mod.OUTPUT_RATE, got  # it is throttled, not stopped
    scr.type("\x03")  # Ctrl-C reaches the foreground job
    scr.text = ""
    scr.type("echo after-flood\n")
    scr.wait("[\r\n]after-flood\r\n", timeout=20)
    # the worker stayed responsive throughout
    assert client.request("status")["type"] == "status"


def test_keystroke_echo_latency(client: WorkerClient, session: str) -> None:
    """Round trip keystroke -> echo through the worker (TLS, pty, shell's line editor)."""
    scr = open_term(client, session)
    scr.type("stty -echo; echo READY\n")
    scr.wait("[\r\n]READY\r\n")
    scr.type("stty echo; cat\n")
    time.sleep(0.3)
    samples = []
    for i in range(30):
        ch = "abcdefghijklmnopqrstuvwxyz0123"[i]
        scr.text = ""
        t0 = time.perf_counter()
        client.send({"type": "term_input", "id": f"k{i}", "session": session, "terminal": scr.terminal,
                     "data": ch})  # fmt: skip
        scr.wait(re.escape(ch))
        samples.append(time.perf_counter() - t0)
    samples.sort()
    print(
        f"keystroke->echo via the worker: median {samples[15] * 1000:.2f} ms, max {samples[-1] * 1000:.2f} ms"
    )
    assert samples[15] < 0.25


def test_terminals_end_with_the_session(client: WorkerClient, session: str) -> None:
    """A restart kills the engine's namespace: its terminals end (term_exit)."""
    scr = open_term(client, session)
    scr.type("echo up\n")
    scr.wait("up")
    client.request("restart", session=session)
    deadline = time.monotonic() + 15
    while scr.exit is None and time.monotonic() < deadline:
        scr.pump(deadline)
    assert scr.exit is not None, scr.text[-300:]
    assert client.request("term_list", session=session)["terminals"] == []


def test_hostile_terminal_requests(client: WorkerClient, session: str) -> None:
    for kind, fields in (
        ("term_open", {"rows": -1}),
        ("term_open", {"cols": True}),
        ("term_input", {"terminal": 5, "data": "x"}),
        ("term_attach", {"terminal": "../../etc"}),
        ("term_close", {}),
    ):
        with pytest.raises(WorkerError) as exc:
            client.request(kind, session=session, **fields)
        assert exc.value.reply["code"] in {"bad_field", "not_found"}, exc.value.reply
    scr = open_term(client, session)
    with pytest.raises(WorkerError) as exc:
        scr.type("x" * (term_mod.MAX_INPUT + 1))
    assert exc.value.reply["code"] == "bad_field"
    opened = [scr]
    with pytest.raises(WorkerError) as exc:
        for _ in range(term_mod.MAX_TERMINALS):
            opened.append(open_term(client, session))
    assert exc.value.reply["code"] == "busy"
    assert len(opened) == term_mod.MAX_TERMINALS
    assert client.request("status")["type"] == "status"


def test_completion_python(client: WorkerClient, session: str) -> None:
    client.execute(session, "import math\nfrom math import factorial\nmy_variable = 3")
    r = client.request("complete", session=session, code="x = facto", cursor=9)
    assert "factorial" in r["matches"] and (r["start"], r["end"]) == (4, 9), r
    r = client.request("complete", session=session, code="math.sq")
    assert r["matches"] == ["sqrt"] and r["start"] == 5, r
    assert "my_variable" in client.request("complete", session=session, code="my_v")["matches"]
    with pytest.raises(WorkerError) as exc:
        client.request("complete", session=session, code="ab", cursor=5)
    assert exc.value.reply["code"] == "bad_field"
    # a hostile __getattr__ / __dir__ does not hang the session: the completion is cut off
    client.execute(
        session, "class Slow:\n    def __dir__(self):\n        import time; time.sleep(60)\ns = Slow()"
    )
    t0 = time.monotonic()
    with pytest.raises(WorkerError) as exc:
        client.request("complete", session=session, code="s.x")
    assert time.monotonic() - t0 < 12
    assert client.execute(session, "1 + 1")["result"]["text/plain"] == "2"


def test_completion_sage(client: WorkerClient) -> None:
    if not HAVE_SAGE:
        pytest.skip("Sage is not installed here (pip install sagews[sage]): Sage completion not tested")
    sid = client.request("open", workspace=f"sagecomp{int(time.time() * 1000) % 100000}", engine="sage")[
        "session"
    ]
    try:
        r = client.request("complete", session=sid, code="facto", engine="sage")
        assert "factor" in r["matches"] and "factorial" in r["matches"], r
    finally:
        client.call("close", session=sid)
