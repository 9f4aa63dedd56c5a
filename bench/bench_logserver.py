"""Log server benchmarks (run as root): `python bench/bench_logserver.py [--records N] [--write]`.

Starts a private PostgreSQL 15 cluster (default, durable settings: fsync on, synchronous_commit on),
migrates it, starts one `sagews-logserver` process (TLS 1.3, client certificates) and measures:

* sustained throughput into PostgreSQL from 4 client processes, each a `LogServerHandler` fed as
  fast as `logger.info` can go: records/s from the first emit to the last row committed
  (target >= 20,000/s);
* the latency one `logger.info("...%d", i)` call adds to the caller with the handler attached and
  connected (per-call perf_counter_ns around the call, bursts of 1,000 calls, 1 ms pause), compared
  with the same logger with a NullHandler (target p99 <= 20 us).

With --write, the results replace the "## Log server" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from bench._common import pct, pressure, replace_section  # noqa: E402
from sagews.db import make_engine, migrate  # noqa: E402
from sagews.db.models import LogRecord  # noqa: E402
from sagews.devpki import DevCA  # noqa: E402
from sagews.logserver.client import LogServerHandler  # noqa: E402
from sagews.logserver.config import ClientConfig  # noqa: E402
from tests.fixtures.postgres import PostgresCluster  # noqa: E402


def client_cfg(base: Path, pki: DevCA, port: int, name: str) -> ClientConfig:
    pair = pki.issue(name, server=False)
    return ClientConfig(
        servers=[f"127.0.0.1:{port}"], cert=str(pair.cert), key=str(pair.key), ca=str(pki.ca_cert_path),
        spool_dir=str(base / f"spool-{name}"), queue_max=10_000_000, level="DEBUG",
    )  # fmt: skip


def producer(base: str, port: int, idx: int, n: int, ready: Any, go: Any, out: Any) -> None:  # noqa: PLR0917
    pki = DevCA(Path(base) / "pki")
    handler = LogServerHandler(client_cfg(Path(base), pki, port, f"bench{idx}"), f"bench{idx}")
    lg = logging.getLogger(f"bench{idx}")
    lg.propagate = False
    lg.setLevel(logging.INFO)
    lg.addHandler(handler)
    ready.set()
    go.wait()
    for i in range(n):
        lg.info("request %d handled in %.3f ms status=%s", i, 1.25, "ok")
    handler.flush(120)
    out.put(dict(handler.metrics))
    handler.close()


def count(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(LogRecord)) or 0)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "^postgres: "], capture_output=True, text=True, check=False).stdout
    return [int(x) for x in out.split()]


def last_id(engine: Any) -> int:
    """Highest stored id: an index lookup, cheap enough to poll while the load runs (a count(*)
    scan every 50 ms took a tenth of the machine). Ids have no gaps here: no record is sent twice."""
    with engine.connect() as conn:
        return int(conn.scalar(select(func.max(LogRecord.id))) or 0)


def throughput(  # noqa: PLR0917
    base: Path, port: int, url: str, per_client: int, server_pid: int, clients: int = 4
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready = [ctx.Event() for _ in range(clients)]
    go, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=producer, args=(str(base), port, i, per_client, ready[i], go, out))
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    for e in ready:
        e.wait(60)
    engine = make_engine(url)
    before, first = count(engine), last_id(engine)
    total = per_client * clients
    groups = {"server": [server_pid], "producers": [p.pid or 0 for p in procs]}
    cpu0 = {pid: cpu_s(pid) for pid in [*postgres_pids(), server_pid, *groups["producers"]]}
    t0 = time.perf_counter()
    go.set()
    top = first
    while top - first < total and time.perf_counter() - t0 < 300:
        time.sleep(0.05)
        top = last_id(engine)
    elapsed = time.perf_counter() - t0
    groups["postgres"] = postgres_pids()  # the server's DB connection may be newer than t0
    cpu = {k: round(sum(cpu_s(p) - cpu0.get(p, 0.0) for p in v), 2) for k, v in groups.items()}
    n = count(engine)  # what was really stored (checked once, after the clock stopped)
    metrics = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    engine.dispose()
    stored = n - before
    return {"clients": clients, "records": total, "stored": stored, "seconds": elapsed,
            "rate": stored / elapsed, "dropped": sum(m.get("dropped_queue_full", 0) for m in metrics),
            "spooled": sum(m.get("spooled", 0) for m in metrics),
            "batches": sum(m.get("batches", 0) for m in metrics), "cpu_seconds": cpu}  # fmt: skip


def call_latency(base: Path, pki: DevCA, port: int, calls: int) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for label in ("null", "logserver"):
        lg = logging.getLogger(f"lat-{label}")
        lg.propagate = False
        lg.setLevel(logging.INFO)
        handler: logging.Handler = (
            logging.NullHandler()
            if label == "null"
            else LogServerHandler(client_cfg(base, pki, port, "lat"), "lat")
        )
        lg.addHandler(handler)
        lg.info("warm up")
        samples: list[float] = []
        clock = time.perf_counter_ns
        for burst in range(calls // 1000):
            for i in range(1000):
                t = clock()
                lg.info("request %d handled in %.3f ms status=%s", burst * 1000 + i, 1.25, "ok")
                samples.append(clock() - t)
            time.sleep(0.001)
        if isinstance(handler, LogServerHandler):
            handler.flush(60)
            res["metrics"] = dict(handler.metrics)
        handler.close()
        us = [s / 1000 for s in samples]
        res[label] = {
            "n": len(us),
            "p50": pct(us, 0.5),
            "p99": pct(us, 0.99),
            "p999": pct(us, 0.999),
            "max": max(us),
        }
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=50_000, help="records per client (4 clients)")
    ap.add_argument("--calls", type=int, default=100_000, help="timed logging calls")
    ap.add_argument("--write", action="store_true", help="write docs/benchmarks.md (Log server section)")
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="sagews-bench-log-", dir="/tmp"))
    base.chmod(0o755)
    pg = PostgresCluster.launch(settings={})  # durable defaults
    server: subprocess.Popen[str] | None = None
    try:
        migrate.upgrade(pg.url)
        pki = DevCA(base / "pki")
        pair = pki.issue("logserver", client=False)
        cfg = {"host": "127.0.0.1", "port": 0, "cert": str(pair.cert), "key": str(pair.key),
               "ca": str(pki.ca_cert_path), "db": {"url": pg.url},
               "spool_dir": str(base / "server-spool")}  # fmt: skip
        (base / "logserver.json").write_text(json.dumps(cfg))
        server = subprocess.Popen(
            [sys.executable, "-m", "sagews.logserver", "--config", str(base / "logserver.json")],
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        assert server.stdout is not None
        port = int(server.stdout.readline().rsplit(":", 1)[1])
        res: dict[str, Any] = {"pressure_before": pressure(), "load_before": os.getloadavg()}
        res["throughput"] = throughput(base, port, pg.url, args.records, server.pid)
        res["latency"] = call_latency(base, pki, port, args.calls)
        res["pressure_after"] = pressure()
        res["load_after"] = os.getloadavg()
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        pg.destroy()
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(res, indent=2, default=str))
    if args.write:
        write_doc(res)
    return 0


def write_doc(res: dict[str, Any]) -> None:
    t, lat = res["throughput"], res["latency"]
    cpu = t["cpu_seconds"]
    per_rec = {k: v / max(t["stored"], 1) * 1e6 for k, v in cpu.items()}  # us of CPU per record
    add50 = lat["logserver"]["p50"] - lat["null"]["p50"]
    add99 = lat["logserver"]["p99"] - lat["null"]["p99"]
    # one server process and one PostgreSQL backend, each on its own core: the slower one bounds
    bound = 1e6 / max(per_rec["server"], per_rec["postgres"], 1e-3)
    rate_ok, lat_ok = t["rate"] >= 20_000, add99 <= 20
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Log server",
        "",
        f"Measured {now} with `python bench/bench_logserver.py --write` on {platform.node()}",
        f"({os.cpu_count()} cores, shared with other work; Python {platform.python_version()}).",
        f"CPU pressure before: `{res['pressure_before']}`; after: `{res['pressure_after']}`;",
        f"load average before/after: {res['load_before'][0]:.2f} / {res['load_after'][0]:.2f}.",
        "One `sagews-logserver` process, PostgreSQL 15 private cluster with durable defaults (fsync on,",
        "synchronous_commit on), all on 127.0.0.1, TLS 1.3 with client certificates. Each coalesced",
        "batch is one transaction: COPY (CSV, built on the server's event loop while the DB thread",
        "runs the previous batch) straight into `log_records`; a batch holding an already stored rid",
        "falls back to a staging table + `INSERT ... SELECT ... ON CONFLICT (rid) DO NOTHING`.",
        "Acknowledgements after COMMIT; clients keep up to 4 full batches unacknowledged (`window`).",
        "",
        "| measurement | n | result | target |",
        "| --- | --- | --- | --- |",
        f"| sustained records/s into PostgreSQL, {t['clients']} client processes "
        f"| {t['stored']} of {t['records']} "
        f"| {t['rate']:,.0f}/s ({t['seconds']:.1f} s; dropped {t['dropped']}, spooled {t['spooled']}) "
        "| >= 20,000/s |",
        f"| `logger.info` call, LogServerHandler attached | {lat['logserver']['n']} "
        f"| p50 {lat['logserver']['p50']:.1f} us, p99 {lat['logserver']['p99']:.1f} us, "
        f"p99.9 {lat['logserver']['p999']:.1f} us | p99 <= 20 us |",
        f"| same call, NullHandler (baseline: logging itself) | {lat['null']['n']} "
        f"| p50 {lat['null']['p50']:.1f} us, p99 {lat['null']['p99']:.1f} us, "
        f"p99.9 {lat['null']['p999']:.1f} us | |",
        f"| added by the handler (difference of the two rows) | | p50 {add50:.1f} us, p99 {add99:.1f} us "
        "| p99 <= 20 us |",
        f"| CPU per record during the throughput run | | server {per_rec['server']:.1f} us, PostgreSQL "
        f"{per_rec['postgres']:.1f} us, producers {per_rec['producers']:.1f} us | |",
        "",
        "Throughput is counted from the first emit until the last row was committed (all 4 producers and",
        "the server and PostgreSQL share the 2 cores). The call latency is measured per call with",
        "`perf_counter_ns` in bursts of 1,000 calls with a 1 ms pause, while the sender thread ships",
        "the records; the difference to the NullHandler row is what the handler adds.",
        "",
        f"**Status (this run):** throughput target {'met' if rate_ok else 'NOT met'}; handler latency target "
        f"{'met' if lat_ok else 'NOT met'} (p99 added {add99:.1f} us).",
        "",
        "History: 18,088 records/s on 2026-11-28 11:24 UTC with stop-and-wait clients, inserts through",
        "the staging table and a btree index on `level` (server 19.3, PostgreSQL 28.6, producers 37.9 us",
        "of CPU per record; 24 % of the CPU idle). Direct COPY cut PostgreSQL to about 20 us per record,",
        "the partial index on warnings and errors (migration 0002) about 1.5 us more, client pipelining",
        "filled the idle time, and encoding each batch once (not twice) cut the producers' sender thread.",
        "",
    ]
    if not rate_ok:
        lines += [
            f"Where the CPU goes: the 4 producer processes run on the same 2 cores and use "
            f"{cpu['producers']:.1f} of the {sum(cpu.values()):.1f} CPU seconds (a bare `logger.info` with a",
            f"NullHandler costs {lat['null']['p50']:.0f} us on this machine). The log server and PostgreSQL "
            f"need {per_rec['server'] + per_rec['postgres']:.0f} us of CPU",
            "per record together; with one core each for the server process and its PostgreSQL backend",
            f"a dedicated 2-core log host is bounded at about {bound:,.0f} records/s by this accounting",
            "(not measured: this machine has no spare cores for the clients).",
            "",
        ]
    replace_section("Log server", "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
