"""Small helpers shared by the benchmark scripts (not a benchmark itself: run.sh runs bench_*.py only)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pressure() -> str:
    """The first line of /proc/pressure/cpu (``some avg10=... total=...``), or ``n/a``."""
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return "n/a"


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..1); with fewer than 100 values p99 is the maximum."""
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def start_memcached(port: int) -> subprocess.Popen[bytes]:
    """memcached on 127.0.0.1:port (as the memcache user), returned once it accepts connections."""
    proc = subprocess.Popen(
        [shutil.which("memcached") or "/usr/bin/memcached", "-p", str(port), "-l", "127.0.0.1", "-U", "0",
         "-u", "memcache"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("memcached did not start") from None
            time.sleep(0.02)


def start_backend(config: Path) -> subprocess.Popen[bytes]:
    """One `sagews-backend` process with the JSON config file ``config``, returned once it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from sagews.backend.app import main; sys.exit(main())",
         "--config", str(config), "--log-level", "WARNING"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if "listening" not in line:
        proc.kill()
        raise RuntimeError(f"sagews-backend did not start: {line!r}")
    return proc


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, wait, and close its stdout pipe if it has one."""
    proc.terminate()
    proc.wait(timeout)
    if proc.stdout is not None:
        proc.stdout.close()


def replace_section(title: str, section: str, doc: Path = BENCHMARKS_MD) -> None:
    """Replace the ``## title`` section of docs/benchmarks.md (or append it), keeping the others intact
    and a blank line before the next ``## `` heading."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    body = section.strip("\n") + "\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: body + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + body
    doc.write_text(text.rstrip("\n") + "\n")


SUMMARY = "Summary"
SUMMARY_HEAD = (
    "| metric | target | measured | peer | ratio | date | CPU pressure |\n"
    "| --- | --- | --- | --- | --- | --- | --- |"
)


def update_summary(rows: list[list[str]], doc: Path = BENCHMARKS_MD) -> None:
    """Put ``rows`` ([metric, target, measured, peer, ratio, date, pressure]) into the summary table at
    the top of docs/benchmarks.md, replacing rows with the same metric and keeping the others."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^## {SUMMARY}\n.*?(?=^## |\Z)", re.S | re.M)
    old: dict[str, str] = {}
    m = pattern.search(text)
    if m:
        for line in m.group(0).splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("| ") and len(cells) == 7 and cells[0] not in ("metric", "---"):
                old[cells[0]] = line
        text = pattern.sub("", text, count=1)
    for r in rows:
        old[r[0]] = "| " + " | ".join(r) + " |"
    section = (
        f"## {SUMMARY}\n\nThe latest figure of each benchmark (`make bench`; details in the sections below). "
        "Figures taken at a CPU pressure (`some avg10`) above a few percent need a quiet re-run.\n\n"
        f"{SUMMARY_HEAD}\n" + "\n".join(old.values()) + "\n\n"
    )
    title, _, rest = text.partition("\n")
    doc.write_text(title + "\n\n" + section + rest.lstrip("\n"))


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    """Return once 127.0.0.1:port accepts connections; fails if ``proc`` exits first or after 20 s."""
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.05)
