"""Capacity simulation (issue 20): the load generator against k backends behind HAProxy, CPU per box.

    .venv/bin/python bench/bench_capacity.py [--backends 1,2] [--users 30] [--pause 0.5]
        [--warmup 10] [--seconds 40] [--write]

Checks the per-request costs of docs/capacity.md on a scaled-down topology on this machine. For each
k in --backends, a fresh stack: a private PostgreSQL (durable defaults), memcached, one worker (root,
mutual TLS, python engine; `tests.backend.helpers.WorkerProc`), k `sagews-backend` processes (HTTP on
127.0.0.1, one cookie secret, one database) and one HAProxy 2.6 terminating TLS (a DevCA certificate)
in front of them, configured like roles/haproxy (leastconn, SockJS sessions stuck to one backend by
the session id in the path). Then --users simulated users from the project's load generator
(`tests/system/load.py`, `run_load`: each signs up, creates and opens a workspace over SockJS through
HAProxy, then loops write, save and every third step an exec, pausing --pause s after each step),
in this process; and a bystander in a separate process that runs `1+1` once per 0.5 s through HAProxy.

After all users are working and --warmup s have passed, a window of --seconds s is measured: the
requests answered by type (write/save/exec, the bystander's execs counted as exec), and the CPU time
of each box from /proc/<pid>/task/*/schedstat (nanoseconds, every thread): each backend process, the
worker's process tree (worker, zygote, engines: the worker and its descendants), PostgreSQL (the
postmaster and its descendants), HAProxy, memcached, and the clients (this process, the bystander).
A sampler reads the trees once a second, so a process that exits during the window keeps the CPU it
had used until its last sample. CPU ms per request per box = CPU during the window / requests
answered in it. The model's prediction for the same mix comes from docs/capacity.md: backend 0.3 ms
per non-exec relay and 0.7 ms per exec, worker 0.86 ms per exec (bench_worker's p50 round trip, used
as a CPU bound); the model has no per-request figure for PostgreSQL or HAProxy.

With --write the "Simulation (bench/bench_capacity.py)" section of docs/capacity.md is replaced.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import secrets
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    free_port,
    pct,
    pressure,
    replace_section,
    start_backend,
    start_memcached,
    stop_process,
    wait_port,
)
from sagews.db import migrate  # noqa: E402
from sagews.devpki import DevCA  # noqa: E402
from tests.backend.helpers import WorkerProc  # noqa: E402
from tests.fixtures.dirs import remove_service_dir, service_dir  # noqa: E402
from tests.fixtures.postgres import PostgresCluster  # noqa: E402
from tests.fixtures.users import pool_config  # noqa: E402

CAPACITY_MD = ROOT / "docs" / "capacity.md"
SECTION = "Simulation (bench/bench_capacity.py)"
# docs/capacity.md, "Measured per-box costs": CPU ms per request
MODEL_BACKEND_RELAY_MS = 0.3  # a non-exec request (write, save)
MODEL_BACKEND_EXEC_MS = 0.7
MODEL_WORKER_EXEC_MS = 0.86
BOXES = ("backend", "worker", "postgres", "haproxy", "memcached", "clients")


# CPU accounting ----------------------------------------------------------------------------------
def parents() -> dict[int, int]:
    """pid -> ppid for every process."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                out[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return out


def descendants(root: int, ppid: dict[int, int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, pp in ppid.items():
        children.setdefault(pp, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def cpu_ns(pid: int) -> int | None:
    """CPU time of every live thread of ``pid`` (schedstat, ns); None if the process is gone."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):  # a thread that just exited
                total += int((task / "schedstat").read_text().split()[0])
    except OSError:
        return None
    return total


def reaped_ns(pid: int) -> int | None:
    """CPU of the children ``pid`` has waited for (cutime + cstime, clock ticks), in ns."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(f[13]) + int(f[14])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


class Meter:
    """CPU per box over a window. ``roots``: box -> [(pid, with descendants?)].

    A process alive at the end counts its CPU since the start (schedstat of every thread, ns). A process
    of a tree that exits in the window is counted through its parent: the growth of the cutime/cstime
    of every tree process alive at the end (the CPU of the children it waited for, whole lives, in clock
    ticks), minus what the exited ones had used before the window. So short-lived children (git, the
    zygote's forks) that live between two samples are counted too. Sampled once a second."""

    def __init__(self, roots: dict[str, list[tuple[int, bool]]]) -> None:
        self.roots = roots
        # pid -> (box, in a tree?, CPU ns at the start or 0 if born later, reaped ns likewise)
        self.first: dict[int, tuple[str, bool, int, int]] = {}
        self.born = 0
        self.exited = 0
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.thread: threading.Thread | None = None

    def sample(self, initial: bool = False) -> None:
        ppid = parents()
        seen: dict[int, tuple[str, bool]] = {}
        for box, roots in self.roots.items():
            for root, tree in roots:
                for pid in descendants(root, ppid) if tree else [root]:
                    seen.setdefault(pid, (box, tree))
        with self.lock:
            for pid, (box, tree) in seen.items():
                if pid in self.first:
                    continue
                ns, reaped = cpu_ns(pid), reaped_ns(pid)
                if ns is None or reaped is None:
                    continue
                if initial:
                    self.first[pid] = (box, tree, ns, reaped)
                else:
                    self.first[pid] = (box, tree, 0, 0)
                    self.born += 1

    def start(self) -> None:
        self.sample(initial=True)

        def loop() -> None:
            while not self.stop_ev.wait(1.0):
                self.sample()

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    def finish(self) -> dict[str, float]:
        """CPU seconds per box (and per backend process as backend<i>) since start()."""
        self.stop_ev.set()
        assert self.thread is not None
        self.thread.join()
        self.sample()
        out: dict[str, float] = {}
        with self.lock:
            for pid, (box, tree, ns0, reaped0) in self.first.items():
                ns, reaped = cpu_ns(pid), reaped_ns(pid)
                if ns is None or reaped is None:  # exited: its parent's cutime has its whole life
                    self.exited += 1
                    used = -(ns0 + reaped0) if tree else 0
                else:
                    used = ns - ns0 + ((reaped - reaped0) if tree else 0)
                for b in {box, box.rstrip("0123456789")}:
                    out[b] = out.get(b, 0.0) + used / 1e9
        return out


# the stack ---------------------------------------------------------------------------------------
def haproxy_config(tmp: Path, pem: Path, front: int, backs: list[int]) -> Path:
    """Like roles/haproxy/templates/haproxy.cfg.j2: leastconn, SockJS sessions stuck to one backend."""
    lines = [
        "global", "    maxconn 4000",
        "defaults", "    mode http", "    option forwardfor", "    option redispatch", "    retries 3",
        "    timeout connect 5s", "    timeout client 60s", "    timeout server 60s",
        "    timeout http-request 10s", "    timeout http-keep-alive 10s", "    timeout tunnel 1h",
        "frontend https", f"    bind 127.0.0.1:{front} ssl crt {pem} alpn http/1.1",
        "    http-request set-header X-Forwarded-Proto https", "    default_backend backends",
        "backend backends", "    balance leastconn",
        "    stick-table type string len 64 size 1m expire 1h",
        "    acl sockjs path_reg ^/sockjs/[^/]+/[^/]+/", "    stick on path,field(4,/) if sockjs",
        *(f"    server be{i} 127.0.0.1:{p}" for i, p in enumerate(backs)),
    ]  # fmt: skip
    cfg = tmp / "haproxy.cfg"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def bystander_main(base: str, ca: str, seconds: float, interval: float) -> int:
    """The bystander process: one user, one workspace; prints ``ready``, waits for a line on stdin,
    then runs `1+1` every ``interval`` s for ``seconds`` s and prints the round trips (ms) as JSON."""
    from tests.system.journey import connect, new_user, new_workspace

    async def go() -> list[float]:
        u = await new_user(base, ca, "bystander")
        ws = await new_workspace(u, "bystander")
        c = await connect(u)
        stream = getattr(c.ws, "stream", None) or getattr(getattr(c.ws, "protocol", None), "stream", None)
        if stream is not None:
            stream.set_nodelay(True)  # Tornado's websocket client does not by default (Nagle: +40 ms)
        r = await c.request({"type": "open", "workspace": ws}, timeout=120)
        assert r.get("type") == "opened", r
        for _ in range(5):
            await c.request({"type": "exec", "session": ws, "code": "1+1", "engine": "python"}, timeout=60)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        times: list[float] = []
        t_end = time.monotonic() + seconds
        nxt = time.monotonic()
        while time.monotonic() < t_end:
            t0 = time.perf_counter()
            r = await c.request(
                {"type": "exec", "session": ws, "code": "1+1", "engine": "python"}, timeout=60
            )
            times.append((time.perf_counter() - t0) * 1e3)
            if r.get("type") == "error":
                raise RuntimeError(f"bystander exec failed: {r}")
            nxt += interval
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
        await c.close()
        return times

    print(json.dumps(asyncio.run(go())), flush=True)
    return 0


async def calibrate(base: str, ca: str, roots: dict[str, list[tuple[int, bool]]], n: int) -> dict[str, Any]:
    """After the load: one client, one request at a time, on the same stack: CPU ms per request per box
    of ``n`` writes, ``n`` execs, and ``n // 4`` saves (each after a write; the write's cost is taken off)."""
    from tests.system.journey import connect, new_user, new_workspace

    u = await new_user(base, ca, "calib")
    ws = await new_workspace(u, "calib")
    c = await connect(u)
    stream = getattr(c.ws, "stream", None) or getattr(getattr(c.ws, "protocol", None), "stream", None)
    if stream is not None:
        stream.set_nodelay(True)
    r = await c.request({"type": "open", "workspace": ws}, timeout=120)
    assert r.get("type") == "opened", r

    async def req(msg: dict[str, Any]) -> None:
        r = await c.request({**msg, "session": ws}, timeout=60)
        if r.get("type") == "error":
            raise RuntimeError(f"calibration {msg['type']} failed: {r}")

    async def phase(steps: list[list[dict[str, Any]]]) -> dict[str, float]:
        m = Meter(roots)
        m.start()
        for step in steps:
            for msg in step:
                await req(msg)
        return {b: v / len(steps) * 1e3 for b, v in m.finish().items()}

    await req({"type": "exec", "code": "1+1", "engine": "python"})
    w = await phase([[{"type": "write", "path": "c.txt", "text": f"{i}\n"}] for i in range(n)])
    x = await phase([[{"type": "exec", "code": f"{i} * 2", "engine": "python"}] for i in range(n)])
    ws_ = await phase(
        [[{"type": "write", "path": "c.txt", "text": f"s{i}\n"}, {"type": "save", "message": f"c{i}"}]
         for i in range(n // 4)]
    )  # fmt: skip
    await c.close()
    return {"write": w, "exec": x, "save": {b: v - w.get(b, 0.0) for b, v in ws_.items()}}


def run_one(args: argparse.Namespace, k: int) -> dict[str, Any]:
    from tests.system.load import Counts, run_load

    tmp = service_dir("sagews-bench-capacity-")  # not /tmp: the worker refuses workspaces there
    procs: list[subprocess.Popen[bytes]] = []
    pg = PostgresCluster.launch(settings={})
    worker = None
    try:
        (tmp / "pki").mkdir(mode=0o755)
        pki = DevCA(tmp / "pki")
        edge = pki.issue("edge")
        pem = tmp / "edge-combined.pem"
        pem.write_bytes(edge.cert.read_bytes() + edge.key.read_bytes())
        pem.chmod(0o600)
        client = pki.issue("backend", server=False)
        mc_port = free_port()
        memcached = start_memcached(mc_port)
        procs.append(memcached)
        worker = WorkerProc(tmp / "worker", pki, {**pool_config("cap"), "user_pool_size": args.users + 8})
        migrate.upgrade(pg.url)
        secret = secrets.token_hex(16)
        backends, ports = [], []
        for i in range(k):
            port = free_port()
            cfg = {
                "host": "127.0.0.1", "port": port, "cookie_secret": secret, "secure_cookies": False,
                "xheaders": True, "memcached": [f"127.0.0.1:{mc_port}"], "worker_cert": str(client.cert),
                "worker_key": str(client.key), "worker_ca": str(pki.ca_cert_path),
                "workers": [{"address": "127.0.0.1", "port": worker.port}], "db": {"url": pg.url},
                "signups_per_ip": 10_000,  # every simulated user signs up from 127.0.0.1
                **dict(json.loads(v) for v in args.set),
            }  # fmt: skip
            (tmp / f"backend{i}.json").write_text(json.dumps(cfg))
            backends.append(start_backend(tmp / f"backend{i}.json"))
            procs.append(backends[-1])
            ports.append(port)
        front = free_port()
        hcfg = haproxy_config(tmp, pem, front, ports)
        subprocess.run(["/usr/sbin/haproxy", "-c", "-q", "-f", str(hcfg)], check=True)
        haproxy = subprocess.Popen(["/usr/sbin/haproxy", "-db", "-f", str(hcfg)], stderr=subprocess.DEVNULL)
        procs.append(haproxy)
        wait_port(front, haproxy, "haproxy")
        base, ca = f"https://127.0.0.1:{front}", str(pki.ca_cert_path)
        bystander = subprocess.Popen(
            [sys.executable, __file__, "--bystander", base, ca, "--seconds", str(args.seconds)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        procs.append(bystander)
        assert bystander.stdin is not None and bystander.stdout is not None
        if bystander.stdout.readline().strip() != b"ready":
            raise RuntimeError("the bystander did not start")
        postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
        roots: dict[str, list[tuple[int, bool]]] = {
            **{f"backend{i}": [(b.pid, True)] for i, b in enumerate(backends)},
            "worker": [(worker.proc.pid, True)],
            "postgres": [(postmaster, True)],
            "haproxy": [(haproxy.pid, True)],
            "memcached": [(memcached.pid, False)],
            "clients": [(os.getpid(), False), (bystander.pid, False)],
        }

        async def load() -> dict[str, Any]:
            idle = Meter(roots)  # the stack at rest (heartbeats, housekeeping), for comparison
            idle.start()
            await asyncio.sleep(args.idle)
            idle_cpu = {b: v / args.idle for b, v in idle.finish().items()}
            counts, stop, started = Counts(), asyncio.Event(), asyncio.Event()
            task = asyncio.ensure_future(
                run_load(base, ca, args.users, stop, counts, pause=args.pause, started=started)
            )
            t_start = time.monotonic()
            while not started.is_set():
                if task.done():
                    task.result()
                    raise RuntimeError("the load ended before every user had started")
                await asyncio.sleep(0.1)
            startup = time.monotonic() - t_start
            await asyncio.sleep(args.warmup)
            meter = Meter(roots)
            p0 = pressure()
            c0, f0 = dict(counts.completed), counts.failed
            meter.start()
            t0 = time.monotonic()
            bystander.stdin.write(b"go\n")  # type: ignore[union-attr]
            bystander.stdin.flush()  # type: ignore[union-attr]
            await asyncio.sleep(args.seconds)
            t1 = time.monotonic()
            c1, f1 = dict(counts.completed), counts.failed
            cpu = meter.finish()
            p1 = pressure()
            line = await asyncio.to_thread(bystander.stdout.readline)  # type: ignore[union-attr]
            stop.set()
            mismatches = await task
            per_type = await calibrate(base, ca, roots, args.calibrate)
            done = {t: c1.get(t, 0) - c0.get(t, 0) for t in ("write", "save", "exec")}
            return {
                "startup_s": startup, "window_s": t1 - t0, "done": done, "failed": f1 - f0,
                "failed_total": counts.failed, "errors": counts.errors[:5], "mismatches": len(mismatches),
                "cpu_s": cpu, "exited": meter.exited, "born": meter.born,
                "pressure_before": p0, "pressure_after": p1, "bystander": json.loads(line),
                "idle_cpu_per_s": idle_cpu, "per_type_ms": per_type,
            }  # fmt: skip

        r = asyncio.run(load())
        by = r.pop("bystander")
        r["bystander_n"] = len(by)
        r["bystander_p50"], r["bystander_p99"] = statistics.median(by), pct(by, 0.99)
        r["bystander_max"] = max(by)
        r["done"]["exec"] += len(by)
        r.update(k=k, users=args.users, pause=args.pause)
        return r
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                stop_process(p, 30)
        if worker is not None:
            worker.stop()
        pg.destroy()
        remove_service_dir(tmp)


def derive(r: dict[str, Any]) -> dict[str, Any]:
    """Per-request CPU per box, and the model's prediction for the same mix."""
    d = r["done"]
    n = d["write"] + d["save"] + d["exec"]
    out: dict[str, Any] = {"requests": n, "rps": n / r["window_s"]}
    for box in BOXES:
        out[f"{box}_ms"] = r["cpu_s"].get(box, 0.0) / n * 1e3
    for i in range(r["k"]):
        out[f"backend{i}_ms"] = r["cpu_s"].get(f"backend{i}", 0.0) / n * 1e3
    out["model_backend_ms"] = (
        (d["write"] + d["save"]) * MODEL_BACKEND_RELAY_MS + d["exec"] * MODEL_BACKEND_EXEC_MS
    ) / n
    out["model_worker_ms"] = d["exec"] * MODEL_WORKER_EXEC_MS / n
    out["cores_busy"] = sum(r["cpu_s"].get(b, 0.0) for b in BOXES) / r["window_s"]
    return out


def report(runs: list[dict[str, Any]]) -> str:
    lines = []
    for r in runs:
        d = derive(r)
        lines.append(
            f"k={r['k']} N={r['users']}: {d['requests']} requests in {r['window_s']:.1f} s "
            f"({d['rps']:.1f}/s; write {r['done']['write']}, save {r['done']['save']}, "
            f"exec {r['done']['exec']}); "
            f"failed {r['failed']}; bystander p50 {r['bystander_p50']:.1f} ms p99 {r['bystander_p99']:.1f} ms"
        )
        lines.append(
            f"  CPU ms/request: backend {d['backend_ms']:.3f} (model {d['model_backend_ms']:.3f}), "
            f"worker {d['worker_ms']:.3f} (model exec only {d['model_worker_ms']:.3f}), "
            f"postgres {d['postgres_ms']:.3f}, haproxy {d['haproxy_ms']:.3f}, memcached "
            f"{d['memcached_ms']:.3f}, clients {d['clients_ms']:.3f}; {d['cores_busy']:.2f} cores busy"
        )
    if len(runs) > 1:
        a, b = derive(runs[0]), derive(runs[-1])
        lines.append(
            f"k={runs[0]['k']} -> k={runs[-1]['k']}: "
            f"backend CPU/request x{b['backend_ms'] / a['backend_ms']:.2f}, "
            f"throughput x{b['rps'] / a['rps']:.2f}"
        )
    return "\n".join(lines)


def write_section(runs: list[dict[str, Any]], when: str, reading: str) -> None:
    rows = []
    for r in runs:
        d = derive(r)
        rows.append(
            "| " + " | ".join([
                when, f"{platform.node()}, nproc {os.cpu_count()}",
                f"`{r['pressure_before'].split(' total')[0]}` / `{r['pressure_after'].split(' total')[0]}`",
                str(r["k"]), str(r["users"]),
                f"{d['rps']:.1f} (w {r['done']['write']}, s {r['done']['save']}, x {r['done']['exec']})",
                f"{d['backend_ms']:.2f} / {d['model_backend_ms']:.2f}",
                f"{d['worker_ms']:.2f} / {d['model_worker_ms']:.2f} (exec only)",
                f"{d['postgres_ms']:.2f} / -", f"{d['haproxy_ms']:.2f} / -",
                f"{d['clients_ms']:.2f}", f"{d['cores_busy']:.2f}",
                f"{r['bystander_p50']:.1f} / {r['bystander_p99']:.1f} ms",
            ]) + " |"
        )  # fmt: skip
    calib = []
    for r in runs:
        for t in ("write", "save", "exec"):
            c = r["per_type_ms"][t]
            cells = [f"{c.get(b, 0.0):.2f}" for b in BOXES if b != "clients"]
            calib.append(f"| {r['k']} | {t} | " + " | ".join(cells) + " |")
    r0 = runs[0]
    cols = [
        "date", "machine", "CPU pressure before / after", "k", "N", "req/s (write, save, exec)",
        "backend ms/req measured / model", "worker ms/req measured / model", "PostgreSQL ms/req",
        "HAProxy ms/req", "clients ms/req", "cores busy", "bystander p50 / p99",
    ]  # fmt: skip
    table_head = "| " + " | ".join(cols) + " |\n" + "| --- " * len(cols) + "|"
    section = f"""## {SECTION}

Run {when} with `python bench/bench_capacity.py --write` on {platform.node()} (`nproc` {os.cpu_count()},
shared with other work; Python {platform.python_version()}). Per run a fresh stack on this machine:
PostgreSQL (durable defaults), memcached, one worker (python engine), k `sagews-backend` processes
behind one HAProxy 2.6 (TLS, leastconn, SockJS sessions sticky as in roles/haproxy), and
{r0["users"]} users of `tests/system/load.py` (`run_load`: write, save, and every third step an exec,
{r0["pause"]} s pause after each step) in the bench process, plus a bystander process running `1+1`
every 0.5 s through HAProxy (its execs count as requests). After every user is working and a warm-up,
a {r0["window_s"]:.0f} s window is measured: requests answered by type, CPU of each box from
`/proc/<pid>/task/*/schedstat` (the worker and PostgreSQL with all their descendants). CPU ms per
request = the box's CPU in the window / all requests answered in it. Model = docs/capacity.md's
per-request costs for the same mix (backend 0.3 ms per write/save relay, 0.7 ms per exec; worker
0.86 ms per exec; no figure for save on the worker, PostgreSQL or HAProxy: "-"). "cores busy" is the
CPU of all boxes, clients included, per second of the window.

{table_head}
{chr(10).join(rows)}

One request at a time after the load (same stack, one client; `--calibrate` writes and execs, a
quarter as many saves, each after a write whose cost is taken off), CPU ms per request:

| k | type | backend | worker | PostgreSQL | HAProxy | memcached |
| --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(calib)}

{reading.strip()}
"""
    text = CAPACITY_MD.read_text()
    if f"## {SECTION}" not in text:  # before "What would check this model"
        head = "## What would check this model"
        text = text.replace(head, f"## {SECTION}\n\n{head}")
        CAPACITY_MD.write_text(text)
    replace_section(SECTION, section, CAPACITY_MD)


def reading_of(runs: list[dict[str, Any]]) -> str:
    """The figures-driven part of the reading (the rest is written by hand in docs/capacity.md)."""
    ds = [derive(r) for r in runs]
    parts = []
    for r, d in zip(runs, ds, strict=True):
        parts.append(
            f"k={r['k']}: backend {d['backend_ms']:.2f} ms/request measured vs {d['model_backend_ms']:.2f} "
            f"model (x{d['backend_ms'] / d['model_backend_ms']:.1f}); worker {d['worker_ms']:.2f} vs "
            f"{d['model_worker_ms']:.2f} for its execs alone (x{d['worker_ms'] / d['model_worker_ms']:.1f}); "
            f"{d['cores_busy']:.2f} of {os.cpu_count()} cores busy."
        )
    if len(ds) > 1:
        parts.append(
            f"From k={runs[0]['k']} to k={runs[-1]['k']} the backend CPU per request changes by "
            f"x{ds[-1]['backend_ms'] / ds[0]['backend_ms']:.2f} and the throughput by "
            f"x{ds[-1]['rps'] / ds[0]['rps']:.2f}."
        )
    failed = sum(r["failed"] for r in runs)
    mism = sum(r["mismatches"] for r in runs)
    parts.append(f"Failed requests in the windows: {failed}; stored saves not matching the last ack: {mism}.")
    return " ".join(parts)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--bystander":
        ap = argparse.ArgumentParser()
        ap.add_argument("--bystander", nargs=2, metavar=("BASE", "CA"))
        ap.add_argument("--seconds", type=float, default=40)
        ap.add_argument("--interval", type=float, default=0.5)
        a = ap.parse_args()
        return bystander_main(a.bystander[0], a.bystander[1], a.seconds, a.interval)
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", default="1,2", help="k values, one run each")
    ap.add_argument("--users", type=int, default=30)
    ap.add_argument("--pause", type=float, default=0.5, help="s after each user's step")
    ap.add_argument("--warmup", type=float, default=10)
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--idle", type=float, default=5, help="s of the stack at rest measured first")
    ap.add_argument("--calibrate", type=int, default=200, help="requests per type, one at a time, after")
    ap.add_argument("--set", action="append", default=[], metavar='["KEY", VALUE]',
                    help='a backend setting as a JSON pair, e.g. \'["repack_after", 0]\'')  # fmt: skip
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--json", type=Path, help="also save the raw results here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_capacity.py needs root (worker, apt)", file=sys.stderr)
        return 1
    if not Path("/usr/sbin/haproxy").exists():
        subprocess.run(["apt-get", "install", "-y", "haproxy"], check=True, stdout=subprocess.DEVNULL)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    runs = []
    for k in (int(x) for x in args.backends.split(",")):
        r = run_one(args, k)
        print(json.dumps(r, indent=2), flush=True)
        runs.append(r)
    print(report(runs))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    if args.write:
        reading = reading_of(runs)
        old = CAPACITY_MD.read_text()
        m = re.search(r"<!-- reading -->\n(.*?)<!-- /reading -->", old, re.S)
        hand = m.group(0) if m else "<!-- reading -->\n(reading to be written)\n<!-- /reading -->"
        write_section(runs, when, reading + "\n\n" + hand)
    return 0


if __name__ == "__main__":
    sys.exit(main())
