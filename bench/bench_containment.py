"""Containment of hostile users, backend side (issue 19): a bystander's round trips during attacks.

    .venv/bin/python bench/bench_containment.py [--seconds 8] [--write]

Starts a private PostgreSQL (durable defaults), memcached, one worker (root, mutual TLS, like
tests/backend) and one `sagews-backend` process (xheaders on, so attackers can come "from" many
addresses). A bystander (its own account and workspace, websocket, TCP_NODELAY) runs `1+1` and
`ping` one after the other in this process; each attack runs alone in a forked child process (its
own event loop and CPU), and the bystander's figures are taken while it runs:

* quiet: no attack (the baseline of the same run);
* fuzz: 10^5 random frames (tests/backend/test_backend_fairness.py's generator) over 50 connections;
* writes: 2,000 `write` requests of one account over 20 connections;
* presence: one member of the bystander's workspace reconnecting 300 times;
* logins: 300 wrong passwords for one account from 30 addresses, concurrently;
* bodies: 64 anonymous POSTs declaring 99 MiB bodies.

With --write the table goes to docs/benchmarks.md ("Containment (backend)" section, replaced).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
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
    update_summary,
)
from sagews.db import migrate  # noqa: E402
from sagews.devpki import DevCA  # noqa: E402
from tests.backend.helpers import HttpUser, SockClient, WorkerProc  # noqa: E402
from tests.backend.test_backend_fairness import fuzz_frame  # noqa: E402
from tests.fixtures.postgres import PostgresCluster  # noqa: E402


def nodelay(c: SockClient) -> None:
    stream = getattr(c.ws, "stream", None) or getattr(getattr(c.ws, "protocol", None), "stream", None)
    if stream is not None:
        stream.set_nodelay(True)


async def new_user(base: str, name: str, ip: str | None = None) -> HttpUser:
    u = HttpUser(base, ip)
    code, body = await u.signup(name)
    if code != 200:
        raise RuntimeError(f"signup {name}: {body}")
    return u


async def new_ws(u: HttpUser, name: str) -> str:
    code, body = await u.req("POST", "/api/workspaces", {"name": name})
    if code != 200:
        raise RuntimeError(body)
    return str(body["workspace"]["id"])


# --- the attacks (each in a child process) ---------------------------------------------------------


async def attack_fuzz(base: str, n: int) -> None:
    u = await new_user(base, f"fuzz{n}")
    ws = await new_ws(u, "fuzz")
    conns = [await SockClient(u).connect() for _ in range(50)]
    rng = random.Random(n)
    for c in conns:
        await c.request({"type": "open", "workspace": ws})
        c.raw = []
    frames = [json.dumps([fuzz_frame(rng, ws) for _ in range(50)]) for _ in range(2000)]

    async def blast(k: int, c: SockClient) -> None:
        assert c.ws is not None
        for f in frames[k * 40 : (k + 1) * 40]:
            if c.closed:
                return
            try:
                await c.ws.write_message(f)
            except Exception:
                return
            await asyncio.sleep(0.01)

    await asyncio.gather(*(blast(k, c) for k, c in enumerate(conns)))
    await asyncio.sleep(1)


async def attack_writes(base: str, n: int) -> None:
    u = await new_user(base, f"flood{n}")
    ws = await new_ws(u, "flood")
    conns = [await SockClient(u).connect() for _ in range(20)]
    for c in conns:
        await c.request({"type": "open", "workspace": ws})

    async def flood(k: int, c: SockClient) -> None:
        ids = {await c.send({"type": "write", "session": ws, "path": f"f{k}_{i}", "text": "x" * 100})
               for i in range(100)}  # fmt: skip
        while ids:
            m = await c.recv(120)
            ids.discard(m.get("re"))

    await asyncio.gather(*(flood(k, c) for k, c in enumerate(conns)))


async def attack_presence(base: str, n: int, cookies: dict[str, str], ws: str) -> None:
    u = HttpUser(base)
    u.cookies = cookies
    for _ in range(300):
        c = await SockClient(u).connect()
        await c.request({"type": "open", "workspace": ws})
        await c.close()


async def attack_logins(base: str, n: int) -> None:
    users = [HttpUser(base, f"10.9.{n}.{i}") for i in range(30)]
    for u in users:
        await u.me()
    await asyncio.gather(*(u.req("POST", "/api/login", {"username": "bystander", "password": f"guess {i}"})
                           for i in range(10) for u in users))  # fmt: skip


async def attack_bodies(base: str, n: int) -> None:
    port = int(base.rsplit(":", 1)[1])

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Length: {99 << 20}\r\n\r\n".encode())
        writer.write(b"{" + b" " * (1 << 20))
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(reader.read(4096), 10)
        writer.close()

    for _ in range(8):
        await asyncio.gather(*(one() for _ in range(8)))


def run_attack(name: str, base: str, extra: tuple[Any, ...]) -> None:
    import tornado.httpclient

    tornado.httpclient.AsyncHTTPClient.configure(None, max_clients=100)
    fn = {"fuzz": attack_fuzz, "writes": attack_writes, "presence": attack_presence,
          "logins": attack_logins, "bodies": attack_bodies}[name]  # fmt: skip
    asyncio.run(fn(base, os.getpid() % 1000, *extra))


# --- the bystander ---------------------------------------------------------------------------------


async def measure(c: SockClient, ws: str, seconds: float, until: Any = None) -> dict[str, Any]:
    execs: list[float] = []
    pings: list[float] = []
    errors = 0
    end = time.monotonic() + max(seconds, 1.0)

    def going() -> bool:  # at least a second, then as long as the attack runs
        return time.monotonic() < end or (until is not None and until())

    async def execs_loop() -> None:
        nonlocal errors
        while going():
            t0 = time.perf_counter()
            frames = await c.frames({"type": "exec", "session": ws, "code": "1+1"}, timeout=120)
            execs.append(time.perf_counter() - t0)
            errors += frames[-1].get("status") != "ok"
            await asyncio.sleep(0.012)  # under the per-connection rate limit (100/s) with the pings

    async def pings_loop() -> None:
        nonlocal errors
        while going():
            t0 = time.perf_counter()
            r = await c.request({"type": "ping"}, timeout=120)
            pings.append(time.perf_counter() - t0)
            errors += r["type"] != "pong"
            await asyncio.sleep(0.05)

    p0 = pressure()
    await asyncio.gather(execs_loop(), pings_loop())
    return {
        "execs": len(execs), "exec_p50": statistics.median(execs) * 1e3, "exec_p99": pct(execs, 0.99) * 1e3,
        "exec_max": max(execs) * 1e3, "ping_p99": pct(pings, 0.99) * 1e3, "errors": errors,
        "pressure_before": p0, "pressure_after": pressure(),
    }  # fmt: skip


async def run(base: str, seconds: float) -> dict[str, dict[str, Any]]:
    owner = await new_user(base, "bystander")
    ws = await new_ws(owner, "bystander")
    member = await new_user(base, "flapper")
    await owner.req("POST", f"/api/workspaces/{ws}/share", {"username": "flapper", "role": "viewer"})
    c = await SockClient(owner).connect()
    nodelay(c)
    await c.request({"type": "open", "workspace": ws})
    for _ in range(50):  # warm
        await c.frames({"type": "exec", "session": ws, "code": "1+1"})
    out = {"quiet": await measure(c, ws, seconds)}
    ctx = multiprocessing.get_context("fork")
    for name, extra in (("fuzz", ()), ("writes", ()), ("presence", (member.cookies, ws)), ("logins", ()),
                        ("bodies", ())):  # fmt: skip
        proc = ctx.Process(target=run_attack, args=(name, base, extra))
        t0 = time.monotonic()
        proc.start()
        await asyncio.sleep(0.2)
        r = await measure(c, ws, 0, until=proc.is_alive)
        await asyncio.get_running_loop().run_in_executor(None, proc.join)
        r["attack_s"] = time.monotonic() - t0
        r["exitcode"] = proc.exitcode
        out[name] = r
        print(name, json.dumps(r), flush=True)
        await asyncio.sleep(2)  # the backend settles (rate-limit buckets refill)
    await c.close()
    return out


DESCRIPTIONS = {
    "quiet": "no attack (baseline)",
    "fuzz": "10^5 random frames over 50 connections",
    "writes": "2,000 writes of one account over 20 connections",
    "presence": "a member of the bystander's workspace reconnecting 300 times",
    "logins": "300 wrong passwords for the bystander's account from 30 addresses",
    "bodies": "64 anonymous POSTs declaring 99 MiB bodies",
}


def write_section(r: dict[str, dict[str, Any]], when: str) -> None:
    rows = "\n".join(
        f"| {name} | {DESCRIPTIONS[name]} | {v.get('attack_s', 0):.1f} | {v['execs']} | "
        f"{v['exec_p50']:.2f} | {v['exec_p99']:.2f} | {v['exec_max']:.1f} | {v['ping_p99']:.2f} | "
        f"{v['errors']} | "
        f"`{v['pressure_before'].split(' total')[0]}` |"
        for name, v in r.items()
    )
    worst = max(v["exec_p99"] for k, v in r.items() if k != "quiet")
    met = "met" if worst <= 50 else "NOT met"
    section = f"""## Containment (backend)

Measured {when} with `python bench/bench_containment.py --write` on {platform.node()}
({os.cpu_count()} cores, shared with other work; Python {platform.python_version()}).
One `sagews-backend` process, one worker (python engine, warm pool 1), PostgreSQL 15 (durable
defaults) and memcached, all on 127.0.0.1. A bystander (own account and workspace, websocket,
TCP_NODELAY) runs `exec 1+1` and `ping` back to back while each attack runs alone in another
process; times in ms. Target (issue 19): bystander exec p99 <= 50 ms during each attack.

| phase | attack | attack s | execs | exec p50 | exec p99 | exec max | ping p99 | errors | pressure before |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{rows}

**Status (this run):** worst exec p99 under attack {worst:.1f} ms: target {met}. Figures taken while
other engineers' jobs shared the two cores (pressure column) need a quiet re-run. The worker's own
hardening (blocking work off its event loop) is issue 19's worker side; these figures include it
as it is on this branch.
"""
    replace_section("Containment (backend)", section)
    p = r["quiet"]["pressure_before"].split(" total")[0]
    update_summary([["bystander exec p99 during the worst attack (issue 19)", "<= 50 ms", f"{worst:.1f} ms",
                     f"quiet {r['quiet']['exec_p99']:.1f} ms", "", when, f"`{p}`"]])  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8, help="length of the quiet phase")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_containment.py needs root (the worker drops to workspace users)", file=sys.stderr)
        return 1
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    pg = PostgresCluster.launch(settings={})
    tmp = Path(tempfile.mkdtemp(prefix="sagews-bench-contain-", dir="/tmp"))
    tmp.chmod(0o755)
    (tmp / "pki").mkdir(mode=0o755)
    pki = DevCA(tmp / "pki")
    client = pki.issue("backend", server=False)
    mc_port, port = free_port(), free_port()
    mc = start_memcached(mc_port)
    worker = WorkerProc(tmp / "worker", pki, "sagews_bc_")
    cfg = {
        "host": "127.0.0.1", "port": port, "cookie_secret": os.urandom(16).hex(), "secure_cookies": False,
        "xheaders": True, "memcached": [f"127.0.0.1:{mc_port}"], "worker_cert": str(client.cert),
        "worker_key": str(client.key), "worker_ca": str(pki.ca_cert_path),
        "workers": [{"address": "127.0.0.1", "port": worker.port}], "db": {"url": pg.url},
    }  # fmt: skip
    (tmp / "backend.json").write_text(json.dumps(cfg))
    migrate.upgrade(pg.url)
    proc = start_backend(tmp / "backend.json")
    try:
        r = asyncio.run(run(f"http://127.0.0.1:{port}", args.seconds))
    finally:
        stop_process(proc)
        worker.stop()
        mc.terminate()
        mc.wait(10)
        pg.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(r, indent=2))
    if args.write:
        write_section(r, when)
    return 0


if __name__ == "__main__":
    sys.exit(main())
