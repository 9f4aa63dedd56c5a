"""Attacks on a worker from hostile clients and hostile cell code, and a bystander's measurements.

Shared by tests/worker/test_worker_containment.py (functional bounds) and bench/bench_worker_containment.py
(the bystander's p99 during each attack). Client-side floods run in forked processes, so the
bystander's timings in the parent are not distorted by the attackers' GIL.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from sagews.worker.client import WorkerClient

REQUEST_TYPES = [
    "hello", "status", "open", "exec", "interrupt", "kill", "restart", "close", "ls", "read", "write",
    "rename", "delete", "history", "save", "restore", "nope", "do_status", "__init__", "",
]  # fmt: skip
FIELDS = ["session", "workspace", "engine", "code", "path", "text", "b64", "src", "dst", "commit",
          "limit", "message", "bundles", "versions", "id", "type"]  # fmt: skip

STRINGS = ["", "..", "../../etc/passwd", "/etc/shadow", "a b", "x" * 300, "\x00", "é€😀", ".git/config",
           "-rf", "%%%", "HEAD~1", "--output=/tmp/x", "ws/../.."]  # fmt: skip

# Cell code for the engine-side attacks (run in the attacker's session).
BACKGROUND_YES = (
    "import subprocess\n"
    "p = subprocess.Popen(['yes', 'spam'])\n"
    "'started'"
)  # fmt: skip
FOREIGN_FRAMES = (  # a thread writes 60 MiB frames with a foreign request id to the control socket
    "import os, struct, threading, json\n"
    "def spam():\n"
    "    data = {'text/plain': 'x' * (60 << 20)}\n"
    "    body = json.dumps({'type': 'display', 'id': 'not-yours', 'data': data})\n"
    "    frame = struct.pack('>I', len(body)) + body.encode()\n"
    "    while True:\n"
    "        os.write(3, frame)\n"
    "threading.Thread(target=spam, daemon=True).start()\n"
    "'started'"
)  # fmt: skip
BASH_FORK_BOMB = (
    "import subprocess, time\n"
    "subprocess.Popen(['bash', '-c', 'f() { f | f & }; f'])\n"
    "time.sleep(2)\n"
    "'started'"
)  # fmt: skip


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63, 2**53 + 1, 1.5, float(rng.randrange(10**6)), 10**400 // 10**390])
    if kind in {3, 4}:
        return rng.choice(STRINGS)
    if kind == 5:
        return rng.randrange(-(10**9), 10**9)
    if kind in {6, 7}:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(FIELDS): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def fuzz_frames(seed: int, n: int) -> Iterator[bytes]:
    """``n`` hostile frames: random types and fields with wrong values, garbage bodies, deep nesting."""
    rng = random.Random(seed)
    for i in range(n):
        r = rng.random()
        if r < 0.05:
            body = rng.randbytes(rng.randrange(1, 200))
        elif r < 0.08:
            body = b"[" * 5000 + b"]" * 5000  # nesting deeper than the JSON parser's recursion limit
        elif r < 0.10:
            body = json.dumps(rng.choice([[], "x", 5, None])).encode()
        else:
            msg = {FIELD: _value(rng) for FIELD in rng.sample(FIELDS, rng.randrange(6))}
            msg["type"] = rng.choice(REQUEST_TYPES) if rng.random() < 0.9 else _value(rng)
            msg["id"] = i if rng.random() < 0.9 else _value(rng)
            body = json.dumps(msg).encode()
        yield struct.pack(">I", len(body)) + body


def _tls(port: int, cert: str, key: str, ca: str) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    raw = socket.create_connection(("127.0.0.1", port), timeout=120)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _read_replies(sock: ssl.SSLSocket, expect: int, internal: list[str]) -> int:
    """Read frames until ``expect`` replies with ``re`` arrived (or the server closed); records
    every ``internal`` error. Returns the number of replies read."""
    buf = bytearray()
    got = 0
    while got < expect:
        try:
            chunk = sock.recv(1 << 20)
        except (OSError, ssl.SSLError):
            break
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 4:
            (n,) = struct.unpack(">I", buf[:4])
            if len(buf) < 4 + n:
                break
            msg = json.loads(bytes(buf[4 : 4 + n]))
            del buf[: 4 + n]
            if msg.get("code") == "internal":
                internal.append(msg.get("message", ""))
            if msg.get("type") in {"error", "ok", "write", "status", "hello", "ls", "read", "opened"}:
                got += 1
    return got


def _hello(sock: ssl.SSLSocket) -> None:
    body = json.dumps({"type": "hello", "id": "h", "versions": [1]}).encode()
    sock.sendall(struct.pack(">I", len(body)) + body)
    _read_replies(sock, 1, [])


def _connection_flood(params: dict[str, Any], frames: list[bytes], expect: int) -> list[str]:
    internal: list[str] = []
    with contextlib.closing(_tls(**params)) as sock:
        _hello(sock)
        reader = threading.Thread(target=_read_replies, args=(sock, expect, internal))
        reader.start()
        sock.sendall(b"".join(frames))
        reader.join(300)
    return internal


def _flood_process(params: dict[str, Any], jobs: list[tuple[list[bytes], int]]) -> None:
    threads = []
    results: list[list[str]] = []
    for frames, expect in jobs:
        out: list[str] = []
        results.append(out)
        t = threading.Thread(
            target=lambda f=frames, e=expect, o=out: o.extend(_connection_flood(params, f, e))
        )
        t.start()
        threads.append(t)
    for t in threads:
        t.join(300)
    internal = [m for r in results for m in r]
    if internal:
        print(f"internal errors: {len(internal)}: {internal[:5]}", flush=True)
    os._exit(1 if internal else 0)


def start_flood(params: dict[str, Any], jobs: list[tuple[list[bytes], int]]) -> multiprocessing.Process:
    """One forked process, one connection (and thread) per job: send the frames, read ``expect``
    replies. Exit code 1 if any reply was an ``internal`` error."""
    proc = multiprocessing.get_context("fork").Process(target=_flood_process, args=(params, jobs))
    proc.start()
    return proc


def write_jobs(
    session: str, connections: int = 20, per_connection: int = 100
) -> list[tuple[list[bytes], int]]:
    """``connections`` x ``per_connection`` pipelined ``write`` requests into one session."""
    jobs = []
    for c in range(connections):
        frames = []
        for i in range(per_connection):
            body = json.dumps(
                {
                    "type": "write",
                    "id": i,
                    "session": session,
                    "path": f"flood/c{c}-{i}.txt",
                    "text": "x" * 100,
                }
            ).encode()
            frames.append(struct.pack(">I", len(body)) + body)
        jobs.append((frames, per_connection))
    return jobs


def fuzz_jobs(
    connections: int = 50, per_connection: int = 200, seed: int = 19
) -> list[tuple[list[bytes], int]]:
    """``connections`` x ``per_connection`` fuzz frames. Replies are not all awaited (garbage with an
    unusable id gets an error with ``re`` null): the reader stops when the server has answered or
    the sender closes."""
    return [(list(fuzz_frames(seed * 1000 + c, per_connection)), per_connection) for c in range(connections)]


def round_trips(
    client: WorkerClient, session: str, until: Callable[[], bool], min_rounds: int = 20
) -> dict[str, list[float]]:
    """Bystander: alternate ``status`` and ``exec 1+1`` until ``until()`` (and at least ``min_rounds``);
    returns the latencies in seconds."""
    out: dict[str, list[float]] = {"status": [], "exec": []}
    while not until() or len(out["exec"]) < min_rounds:
        t0 = time.perf_counter()
        client.request("status")
        t1 = time.perf_counter()
        r = client.execute(session, "1+1")
        t2 = time.perf_counter()
        assert r["result"]["text/plain"] == "2", r
        out["status"].append(t1 - t0)
        out["exec"].append(t2 - t1)
    return out


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its own, not its children's)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
