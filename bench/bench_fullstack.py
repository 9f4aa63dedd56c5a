"""Full-stack execute latency through HAProxy (TLS), against Jupyter Server in the same run (issue 16).

    .venv/bin/python bench/bench_fullstack.py [--rounds 10] [--per-round 100] [--write]

Setup it does itself (idempotent): `apt-get install haproxy` if /usr/sbin/haproxy is missing,
static/node_modules (static/build.sh: the npm sockjs-client), and a separate venv
build/jupyter-venv with Jupyter Server 2.21 + ipykernel 7.4 from PyPI.

Starts a private PostgreSQL (durable defaults), memcached, one worker (root, mutual TLS), one
`sagews-backend` process (HTTP on 127.0.0.1 behind HAProxy, uvloop), two Jupyter Servers (stock, and
with TCP_NODELAY forced on every accepted socket through a sitecustomize: Jupyter never sets it, so
stock loses ~40 ms per message to Nagle + delayed ACK), one HAProxy 2.6 terminating TLS (a DevCA
certificate) in front of all three, and one node process speaking the real client protocols: the npm
sockjs-client (websocket transport) for sagews, the kernel websocket for Jupyter. Each round runs
`--per-round` executions of `1+1` on each of the three, one after the other (so outside load hits all
alike); the order rotates every round. The backend's CPU per execution is its CPU time during its
rounds divided by their executions.

With --write the summary goes to docs/benchmarks.md ("Full stack (HAProxy, TLS) vs Jupyter Server").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
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
from tests.backend.helpers import WorkerProc  # noqa: E402
from tests.fixtures.postgres import PostgresCluster  # noqa: E402

JUPYTER_VENV = ROOT / "build" / "jupyter-venv"
JUPYTER_PINS = ["jupyter_server==2.21.1", "ipykernel==7.4.0"]
NODELAY_SITE = """
# TCP_NODELAY on every socket Jupyter's tornado accepts, and kept on: tornado switches it off again
# after each HTTP response (the websocket upgrade too), so set_nodelay(False) means True here
import socket, tornado.iostream, tornado.tcpserver
_accept = tornado.tcpserver.TCPServer._handle_connection
def _handle(self, connection, address):
    try:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    return _accept(self, connection, address)
tornado.tcpserver.TCPServer._handle_connection = _handle
_set = tornado.iostream.IOStream.set_nodelay
tornado.iostream.IOStream.set_nodelay = lambda self, value: _set(self, True)
"""


def setup() -> None:
    if not Path("/usr/sbin/haproxy").exists():
        subprocess.run(["apt-get", "install", "-y", "haproxy"], check=True, stdout=subprocess.DEVNULL)
    if not (ROOT / "static" / "node_modules" / "sockjs-client").exists():
        subprocess.run(["bash", str(ROOT / "static" / "build.sh")], check=True)
    if not (JUPYTER_VENV / "bin" / "jupyter-server").exists():
        subprocess.run([sys.executable, "-m", "venv", str(JUPYTER_VENV)], check=True)
        subprocess.run([str(JUPYTER_VENV / "bin" / "pip"), "install", "-q", *JUPYTER_PINS], check=True)


def start_jupyter(tmp: Path, name: str, port: int, token: str, nodelay: bool) -> subprocess.Popen[bytes]:
    home = tmp / name
    home.mkdir()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(home / "rt"), "JUPYTER_DATA_DIR": str(home / "data"),
           "JUPYTER_CONFIG_DIR": str(home / "cfg"), "IPYTHONDIR": str(home / "ipy")}  # fmt: skip
    if nodelay:
        (home / "site").mkdir()
        (home / "site" / "sitecustomize.py").write_text(NODELAY_SITE)
        env["PYTHONPATH"] = str(home / "site")
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(JUPYTER_VENV / "bin" / "jupyter-server"), "--no-browser", "--allow-root", f"--port={port}",
         "--ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={home}"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    log.close()
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                tail = (home / "server.log").read_text()[-2000:]
                raise RuntimeError(f"jupyter {name} did not start: {tail}") from None
            time.sleep(0.3)


def start_kernel(port: int, token: str) -> str:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/kernels", data=b'{"name": "python3"}', method="POST",
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310
        return str(json.loads(r.read())["id"])


def haproxy_config(tmp: Path, pem: Path, routes: dict[int, int]) -> Path:
    lines = [
        "global", "    maxconn 4000", "defaults", "    mode http", "    timeout connect 5s",
        "    timeout client 60s", "    timeout server 60s", "    timeout tunnel 1h",
        "    option http-server-close",
    ]  # fmt: skip
    for front, back in routes.items():
        lines += [
            f"frontend f{front}", f"    bind 127.0.0.1:{front} ssl crt {pem}",
            f"    default_backend b{front}",
            f"backend b{front}", f"    server s 127.0.0.1:{back}",
        ]  # fmt: skip
    cfg = tmp / "haproxy.cfg"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def cpu_s(pid: int) -> float:
    """CPU time of every thread of ``pid`` in seconds, at nanosecond resolution (schedstat), not ticks."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def signup(base: str) -> tuple[str, str, str]:
    """(Cookie header, xsrf, workspace id) for a new account, straight to the backend."""
    import asyncio

    from tests.backend.helpers import HttpUser

    async def go() -> tuple[str, str, str]:
        u = HttpUser(base)
        code, body = await u.signup("fullstack")
        assert code == 200, body
        code, body = await u.req("POST", "/api/workspaces", {"name": "bench"})
        assert code == 200, body
        return u.cookie_header(), u.cookies["_xsrf"], body["workspace"]["id"]

    return asyncio.run(go())


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="sagews-bench-fullstack-", dir="/tmp"))
    tmp.chmod(0o755)
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
        mc_port, port = free_port(), free_port()
        procs.append(start_memcached(mc_port))
        worker = WorkerProc(tmp / "worker", pki, "sagews_bf_")
        cfg = {
            "host": "127.0.0.1", "port": port, "cookie_secret": secrets.token_hex(16),
            "secure_cookies": False,
            "xheaders": True, "memcached": [f"127.0.0.1:{mc_port}"], "worker_cert": str(client.cert),
            "worker_key": str(client.key), "worker_ca": str(pki.ca_cert_path),
            "workers": [{"address": "127.0.0.1", "port": worker.port}], "db": {"url": pg.url},
        }  # fmt: skip
        (tmp / "backend.json").write_text(json.dumps(cfg))
        migrate.upgrade(pg.url)
        backend = start_backend(tmp / "backend.json")
        procs.append(backend)
        token = secrets.token_hex(16)
        j_stock, j_nodelay = free_port(), free_port()
        procs.append(start_jupyter(tmp, "stock", j_stock, token, nodelay=False))
        procs.append(start_jupyter(tmp, "nodelay", j_nodelay, token, nodelay=True))
        k_stock, k_nodelay = start_kernel(j_stock, token), start_kernel(j_nodelay, token)
        e_sagews, e_stock, e_nodelay = free_port(), free_port(), free_port()
        hcfg = haproxy_config(tmp, pem, {e_sagews: port, e_stock: j_stock, e_nodelay: j_nodelay})
        subprocess.run(["/usr/sbin/haproxy", "-c", "-q", "-f", str(hcfg)], check=True)
        procs.append(
            subprocess.Popen(["/usr/sbin/haproxy", "-db", "-f", str(hcfg)], stderr=subprocess.DEVNULL)
        )
        time.sleep(0.5)
        cookie, xsrf, ws = signup(f"http://127.0.0.1:{port}")
        node = subprocess.Popen(
            ["node", str(ROOT / "bench" / "fullstack_client.js")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**os.environ, "NODE_PATH": str(ROOT / "static" / "node_modules"),
                 "NODE_EXTRA_CA_CERTS": str(pki.ca_cert_path)},
        )  # fmt: skip
        procs.append(node)
        jobs = {
            "sagews": {"kind": "sagews", "url": f"https://127.0.0.1:{e_sagews}/sockjs", "cookie": cookie,
                       "xsrf": xsrf, "workspace": ws},
            "jupyter_stock": {"kind": "jupyter", "token": token,
                              "url": f"wss://127.0.0.1:{e_stock}/api/kernels/{k_stock}/channels"},
            "jupyter_nodelay": {"kind": "jupyter", "token": token,
                                "url": f"wss://127.0.0.1:{e_nodelay}/api/kernels/{k_nodelay}/channels"},
        }  # fmt: skip

        def job(name: str, n: int) -> list[float]:
            assert node.stdin is not None and node.stdout is not None
            node.stdin.write((json.dumps({**jobs[name], "name": name, "n": n}) + "\n").encode())
            node.stdin.flush()
            reply = json.loads(node.stdout.readline())
            if "error" in reply:
                raise RuntimeError(f"{name}: {reply['error']}")
            return list(reply["times"])

        for name in jobs:  # connect and warm up
            job(name, 20)
        times: dict[str, list[float]] = {name: [] for name in jobs}
        backend_cpu, p0 = 0.0, pressure()
        order = list(jobs)
        for r in range(args.rounds):
            for name in order[r % 3 :] + order[: r % 3]:
                c0 = cpu_s(backend.pid)
                times[name] += job(name, args.per_round)
                if name == "sagews":
                    backend_cpu += cpu_s(backend.pid) - c0
        p1 = pressure()
        out: dict[str, Any] = {"pressure_before": p0, "pressure_after": p1, "n": args.rounds * args.per_round}
        for name, t in times.items():
            out[name] = {"p50": statistics.median(t), "p99": pct(t, 0.99), "max": max(t)}
        out["backend_cpu_ms_per_exec"] = backend_cpu / len(times["sagews"]) * 1e3
        return out
    finally:
        for p in reversed(procs):
            stop_process(p, 10) if p.poll() is None else None
        if worker is not None:
            worker.stop()
        pg.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


def write_section(r: dict[str, Any], when: str) -> None:
    s, st, nd = r["sagews"], r["jupyter_stock"], r["jupyter_nodelay"]
    p = r["pressure_before"].split(" total")[0]

    cells: list[list[str]] = []

    def row(metric: str, target: str, measured: str, peer: str, ratio: str) -> str:
        cells.append([metric, target, measured, peer, ratio, when, f"`{p}`"])
        return "| " + " | ".join(cells[-1]) + " |"

    rows = [
        row("exec `1+1` p50 through HAProxy (TLS)", "<= 1.2 ms", f"{s['p50']:.2f} ms",
            f"Jupyter NODELAY {nd['p50']:.2f} ms", f"{s['p50'] / nd['p50']:.3f} (target <= 0.15)"),
        row("exec `1+1` p99 through HAProxy (TLS)", "<= 3 ms", f"{s['p99']:.2f} ms",
            f"Jupyter NODELAY {nd['p99']:.2f} ms", f"{s['p99'] / nd['p99']:.3f}"),
        row("same, Jupyter stock (Nagle)", "", "", f"p50 {st['p50']:.2f} ms, p99 {st['p99']:.2f} ms",
            f"{s['p50'] / st['p50']:.3f}"),
        row("backend CPU per exec", "<= 0.3 ms", f"{r['backend_cpu_ms_per_exec']:.3f} ms", "", ""),
    ]  # fmt: skip
    met = [s["p50"] <= 1.2, s["p99"] <= 3, s["p50"] <= 0.15 * nd["p50"], r["backend_cpu_ms_per_exec"] <= 0.3]
    section = f"""## Full stack (HAProxy, TLS) vs Jupyter Server

Measured {when} with `python bench/bench_fullstack.py --write` on {platform.node()}
({os.cpu_count()} cores, shared with other work; Python {platform.python_version()}); CPU pressure
before `{r["pressure_before"]}`, after `{r["pressure_after"]}`.
HAProxy 2.6 terminates TLS (DevCA certificate) in front of one `sagews-backend` (uvloop, HTTP on
127.0.0.1; one worker, python engine; PostgreSQL, memcached) and two Jupyter Server 2.21 +
ipykernel 7.4 (stock, and with TCP_NODELAY forced on every accepted socket). One node process
speaks the real protocols: the npm sockjs-client 1.6.1 (websocket) and Jupyter's kernel websocket;
{r["n"]} executions of `1+1` each, in interleaved rounds (the order rotates), one at a time.

| metric | target | measured | peer | ratio | date | CPU pressure |
| --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

max: sagews {s["max"]:.1f} ms, Jupyter NODELAY {nd["max"]:.1f} ms, stock {st["max"]:.1f} ms.
**Status (this run):** {sum(met)} of 4 targets met ({
        ", ".join(n for n, ok in zip(("p50", "p99", "ratio", "CPU"), met, strict=True) if not ok)
        or "none missed"
    } missed).
"""
    replace_section("Full stack (HAProxy, TLS) vs Jupyter Server", section)
    update_summary(cells)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=100)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_fullstack.py needs root (worker, apt)", file=sys.stderr)
        return 1
    setup()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    r = run(args)
    print(json.dumps(r, indent=2))
    if args.write:
        write_section(r, when)
    return 0


if __name__ == "__main__":
    sys.exit(main())
