"""Backend benchmarks (not timed tests): SockJS sessions at scale and workspace creation.

    .venv/bin/python bench/bench_backend.py [--sessions 1000] [--seconds 20] [--creates 300] [--write]

Starts a private PostgreSQL (durable defaults), memcached, and one `sagews-backend` process (HTTP on
127.0.0.1, no worker: neither measurement needs one), then from this process (its own event loop):

1. opens N SockJS websocket sessions (one account, cookie auth, `hello`), and sends one `ping` per
   session per second, staggered, for --seconds; reports ping round trip p50/p99/max and the backend's
   RSS growth per session (VmRSS before/after connecting);
2. creates --creates workspaces one after the other over HTTP (`POST /api/workspaces`: CSRF check,
   session lookup, one INSERT transaction on PostgreSQL); reports p50/p99.

With --write the results go to docs/benchmarks.md ("Backend" section, replaced).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tornado.httpclient  # noqa: E402
import tornado.websocket  # noqa: E402

from bench._common import (  # noqa: E402
    free_port,
    pct,
    pressure,
    start_backend,
    start_memcached,
    stop_process,
    update_summary,
)
from tests.backend.helpers import HttpUser  # noqa: E402
from tests.fixtures.postgres import PostgresCluster  # noqa: E402


def rss_kb(pid: int) -> int:
    m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) if m else 0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def open_session(
    base: str, cookie: str, xsrf: str, i: int
) -> tornado.websocket.WebSocketClientConnection:
    url = base.replace("http", "ws", 1) + f"/sockjs/000/b{i:06d}/websocket"
    ws = await tornado.websocket.websocket_connect(
        tornado.httpclient.HTTPRequest(url, headers={"Cookie": cookie})
    )
    stream = getattr(ws, "stream", None) or getattr(getattr(ws, "protocol", None), "stream", None)
    if stream is not None:
        stream.set_nodelay(True)  # Tornado's websocket client does not by default (Nagle: +40 ms)
    assert await ws.read_message() == "o"
    await ws.write_message(
        json.dumps([json.dumps({"type": "hello", "id": 0, "versions": [1], "xsrf": xsrf})])
    )
    m = await ws.read_message()
    assert m is not None and '\\"hello\\"' in m, m
    return ws


async def pinger(
    ws: tornado.websocket.WebSocketClientConnection,
    seconds: float,
    offset: float,
    out: list[float],
    interval: float = 1.0,
) -> None:
    await asyncio.sleep(offset)
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
        t0 = time.perf_counter()
        await ws.write_message(json.dumps([json.dumps({"type": "ping", "id": n})]))
        while True:
            m = await ws.read_message()
            if m is None:
                raise ConnectionError("closed")
            if m.startswith("a") and "pong" in m:
                break
            if m.startswith("a") and "error" in m:
                raise RuntimeError(f"ping refused: {m[:200]}")
        out.append(time.perf_counter() - t0)
        await asyncio.sleep(max(0.0, interval - (time.perf_counter() - t0)))


async def run(args: argparse.Namespace, base: str, pid: int) -> dict[str, object]:
    u = HttpUser(base)
    code, body = await u.signup("bench")
    assert code == 200, body
    cookie, xsrf = u.cookie_header(), u.cookies["_xsrf"]
    # workspace creates first (quiet backend)
    creates = []
    for i in range(args.creates):
        t0 = time.perf_counter()
        code, body = await u.req("POST", "/api/workspaces", {"name": f"w{i}"})
        creates.append(time.perf_counter() - t0)
        assert code == 200, body
    rss0 = rss_kb(pid)
    sem = asyncio.Semaphore(50)
    t_connect = time.perf_counter()

    async def one(i: int) -> tornado.websocket.WebSocketClientConnection:
        async with sem:
            return await open_session(base, cookie, xsrf, i)

    conns = await asyncio.gather(*(one(i) for i in range(args.sessions)))
    connect_s = time.perf_counter() - t_connect
    print(f"{len(conns)} sessions connected in {connect_s:.1f} s", flush=True)
    await asyncio.sleep(1)
    rss1 = rss_kb(pid)
    rtts: list[float] = []

    async def gc_now() -> dict[str, float]:
        _, text = await u.req("GET", "/metrics")
        out = {}
        for line in text.decode().splitlines():
            name, _, value = line.rpartition(" ")
            if name in ("sagews_gc_full_collections", 'sagews_gc_pause_seconds_bucket{le="0.1"}',
                        "sagews_gc_pause_seconds_count"):  # fmt: skip
                out[name] = float(value)
        return out

    gc0 = await gc_now()
    p_before = pressure()
    cpu0, me0, t0 = cpu_s(pid), time.process_time(), time.monotonic()
    iv = args.ping_interval
    await asyncio.gather(
        *(pinger(c, args.seconds, iv * i / len(conns), rtts, iv) for i, c in enumerate(conns))
    )
    p_after = pressure()
    wall = time.monotonic() - t0
    server_cpu, client_cpu = (cpu_s(pid) - cpu0) / wall, (time.process_time() - me0) / wall
    gc1 = await gc_now()
    _, metrics = await u.req("GET", "/metrics")
    gc_stats = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.decode().splitlines()
        if line.startswith(("sagews_gc_full_collections", "sagews_gc_longest_pause_seconds"))
    }
    for c in conns:
        c.close()
    return {
        "sessions": args.sessions,
        "connect_s": connect_s,
        "pings": len(rtts),
        "ping_p50_ms": statistics.median(rtts) * 1e3,
        "ping_p99_ms": pct(rtts, 0.99) * 1e3,
        "ping_max_ms": max(rtts) * 1e3,
        "rss_before_mb": rss0 / 1024,
        "rss_after_mb": rss1 / 1024,
        "kb_per_session": (rss1 - rss0) / args.sessions,
        "creates": len(creates),
        "create_p50_ms": statistics.median(creates) * 1e3,
        "create_p99_ms": pct(creates, 0.99) * 1e3,
        "server_cpu_cores": server_cpu,
        "client_cpu_cores": client_cpu,
        "pressure_ping_before": p_before,
        "pressure_ping_after": p_after,
        "ping_interval": iv,
        "gc_full": gc_stats.get("sagews_gc_full_collections", -1),
        "gc_longest_ms": gc_stats.get("sagews_gc_longest_pause_seconds", -1) * 1e3,
        # during the ping phase only (connecting 10,000 sessions allocates enough for full collections)
        "gc_full_ping_phase": gc1["sagews_gc_full_collections"] - gc0["sagews_gc_full_collections"],
        "gc_pauses_over_100ms_ping_phase": (
            gc1["sagews_gc_pause_seconds_count"] - gc1['sagews_gc_pause_seconds_bucket{le="0.1"}']
        )
        - (gc0["sagews_gc_pause_seconds_count"] - gc0['sagews_gc_pause_seconds_bucket{le="0.1"}']),
    }


BASELINE = r"""
import asyncio, json, sys
import tornado.web, tornado.websocket
class H(tornado.websocket.WebSocketHandler):
    def open(self, *a):
        self.set_nodelay(True); self.write_message("o")
    def on_message(self, m):
        msg = json.loads(json.loads(m)[0])
        reply = {"type": "hello" if msg["type"] == "hello" else "pong", "re": msg["id"]}
        self.write_message("a" + json.dumps([json.dumps(reply)]))
async def main():
    tornado.web.Application([(r"/sockjs/.*", H)]).listen(int(sys.argv[1]), "127.0.0.1")
    print("listening", flush=True); await asyncio.Event().wait()
asyncio.run(main())
"""


async def baseline(args: argparse.Namespace) -> dict[str, float]:
    """The same ping load against a bare Tornado websocket echo (no SockJS, no app): the machine's share."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BASELINE, str(port)], stdout=subprocess.PIPE)  # noqa: ASYNC220
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        base = f"http://127.0.0.1:{port}"
        sem = asyncio.Semaphore(50)

        async def one(i: int) -> tornado.websocket.WebSocketClientConnection:
            async with sem:
                return await open_session(base, "", "", i)

        conns = await asyncio.gather(*(one(i) for i in range(args.sessions)))
        rtts: list[float] = []
        await asyncio.gather(*(pinger(c, args.seconds, i / len(conns), rtts) for i, c in enumerate(conns)))
        for c in conns:
            c.close()
        return {"base_p50_ms": statistics.median(rtts) * 1e3, "base_p99_ms": pct(rtts, 0.99) * 1e3}
    finally:
        proc.terminate()
        proc.wait(10)


def status(r: dict[str, object]) -> str:
    ping_ok = float(r["ping_p99_ms"]) <= 20  # type: ignore[arg-type]
    create_ok = float(r["create_p50_ms"]) <= 50  # type: ignore[arg-type]
    verdict = ", ".join(
        [
            f"ping p99 target {'met' if ping_ok else 'missed'}",
            f"workspace create p50 target {'met' if create_ok else 'missed'}",
        ]
    )
    text = f"**Status (this run):** {verdict}."
    if not ping_ok:
        text += (
            " Compare with the bare-websocket baseline of the same run: when it is as slow, the latency is"
            " scheduling delay on a saturated machine (the backend used the CPU share shown above), not work"
            " in the backend; re-run on a quiet machine (pressure avg10 below 5)."
        )
    return text


def write_section(r: dict[str, Any], when: str, load: tuple[float, float]) -> None:
    baseline = (
        f"p50 {r['base_p50_ms']:.2f} ms, p99 {r['base_p99_ms']:.2f} ms" if "base_p50_ms" in r else "not run"
    )
    doc = ROOT / "docs" / "benchmarks.md"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    section = f"""## Backend

Measured {when} with `python bench/bench_backend.py --write` on {platform.node()}
({os.cpu_count()} cores, shared with other work; Python {platform.python_version()}).
CPU pressure during the ping phase, before: `{r["pressure_ping_before"]}`;
after: `{r["pressure_ping_after"]}`;
load average before/after the run: {load[0]:.2f} / {load[1]:.2f}.
One `sagews-backend` process (Tornado + sockjs-tornado on uvloop, HTTP on 127.0.0.1), PostgreSQL 15
private cluster with durable defaults, memcached; the load generator is one Python process on the same
two cores (websocket transport, TCP_NODELAY set on the client sockets).

| measurement | n | result | target |
| --- | --- | --- | --- |
| SockJS `ping` round trip, {r["sessions"]} websocket sessions, 1 ping / {r["ping_interval"]:g} s each \
| {r["pings"]} | p50 {r["ping_p50_ms"]:.2f} ms, p99 {r["ping_p99_ms"]:.2f} ms, max {r["ping_max_ms"]:.1f} ms \
| p99 <= 20 ms (issue 16) |
| same load, bare Tornado websocket echo (no SockJS/app; machine baseline, same run) | {r["sessions"]} \
| {baseline} | |
| garbage collection in the backend during the run (its /metrics) | \
| whole run: longest pause {r["gc_longest_ms"]:.1f} ms, {r["gc_full"]:.0f} full collections; \
ping phase: {r["gc_full_ping_phase"]:.0f} full, {r["gc_pauses_over_100ms_ping_phase"]:.0f} pauses > 100 ms \
| no stall over 100 ms |
| CPU during the ping phase (cores) | \
| backend {r["server_cpu_cores"]:.2f}, load generator {r["client_cpu_cores"]:.2f} | |
| backend memory per session (VmRSS growth / sessions) | {r["sessions"]} \
| {r["kb_per_session"]:.1f} KB ({r["rss_before_mb"]:.1f} -> {r["rss_after_mb"]:.1f} MB) | |
| connecting them (50 at a time) | {r["sessions"]} | {r["connect_s"]:.2f} s | |
| workspace create (`POST /api/workspaces`), PostgreSQL | {r["creates"]} \
| p50 {r["create_p50_ms"]:.2f} ms, p99 {r["create_p99_ms"]:.2f} ms | p50 <= 50 ms |

`ping` is answered by the connection handler without touching the DB or a worker: it measures the
SockJS/Tornado path under the session count. A workspace create is the HTTP round trip with the CSRF
check, the session lookup (memcached) and one transaction inserting the workspace and its owner row;
the git repository is created when the workspace is first opened on a worker, so it is not included.

{status(r)}
"""
    pattern = re.compile(r"## Backend\n.*?(?=\n## |\Z)", re.S)
    text = (
        pattern.sub(section.rstrip("\n") + "\n", text)
        if pattern.search(text)
        else text.rstrip("\n") + "\n\n" + section
    )
    doc.write_text(text)
    p = str(r["pressure_ping_before"]).split(" total")[0]
    n, iv = r["sessions"], r["ping_interval"]
    update_summary([
        [f"{n} websocket sessions, 1 ping / {iv:g} s each: ping p99 (max)", "<= 20 ms",
         f"{r['ping_p99_ms']:.1f} ms ({r['ping_max_ms']:.0f} ms)", "", "", when, f"`{p}`"],
        [f"{n} websocket sessions: backend memory per session", "<= 20 KB", f"{r['kb_per_session']:.1f} KB",
         "", "", when, f"`{p}`"],
        [f"{n} websocket sessions: GC pauses over 100 ms / full collections in the ping phase", "0",
         f"{r['gc_pauses_over_100ms_ping_phase']:.0f} / {r['gc_full_ping_phase']:.0f} (longest pause of "
         f"the whole run, connecting included: {r['gc_longest_ms']:.0f} ms)", "", "", when, f"`{p}`"],
    ])  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--creates", type=int, default=300)
    ap.add_argument("--ping-interval", type=float, default=1.0, help="seconds between a session's pings")
    ap.add_argument("--no-baseline", action="store_true", help="skip the bare-websocket baseline")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    pg = PostgresCluster.launch(settings={})
    tmp = Path(tempfile.mkdtemp(prefix="sagews-bench-backend-"))
    mc_port = free_port()
    mc = start_memcached(mc_port)
    port = free_port()
    cfg = {
        "host": "127.0.0.1",
        "port": port,
        "cookie_secret": os.urandom(16).hex(),
        "secure_cookies": False,
        "memcached": [f"127.0.0.1:{mc_port}"],
        "db": {"url": pg.url, "pool_size": 5},
    }
    (tmp / "backend.json").write_text(json.dumps(cfg))
    from sagews.db import migrate

    migrate.upgrade(pg.url)
    proc = start_backend(tmp / "backend.json")
    try:
        r = asyncio.run(run(args, f"http://127.0.0.1:{port}", proc.pid))
        print(json.dumps(r), flush=True)
        if not args.no_baseline:
            r.update(asyncio.run(baseline(args)))
    finally:
        stop_process(proc)
        mc.terminate()
        mc.wait(10)
        pg.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(r, indent=2))
    if args.write:
        write_section(r, when, (load0, os.getloadavg()[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
