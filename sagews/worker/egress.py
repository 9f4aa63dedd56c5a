"""Per-uid egress rules: workspace users cannot connect to the appliance's own services.

Workspace users have the fixed uids ``uid_base .. uid_base + user_pool_size - 1`` (users.py), so one
nftables rule matching the sending socket's uid (``meta skuid``) covers every workspace. The rules
reject, for those uids only, TCP and UDP to the appliance's service ports on any address (memcached,
PostgreSQL, the backend and its /metrics, the worker, the log server, nginx's static port) and
everything to the appliance's own hosts. ``sagews dev`` applies them with the ports it uses; the
``sagews_worker`` role renders the same rules (docs/security.md).
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Iterable

# The appliance's service ports (the deployment contract, playbooks/vars/sagews.yml): PostgreSQL, worker,
# log server, backend, nginx static, memcached, etcd (client, peer), Patroni's REST API, pgBackRest's TLS
# server, HAProxy's stats page and its peers.
SERVICE_PORTS = (5432, 6100, 6200, 8443, 8081, 11211, 2379, 2380, 8008, 8432, 8404, 10000)


def ruleset(
    table: str, uid_first: int, uid_last: int, ports: Iterable[int], hosts: Iterable[str] = ()
) -> str:
    """``nft -f`` input defining ``table inet <table>`` with an output chain that rejects the uid
    range's connections to ``ports`` (any address) and to ``hosts`` (any port)."""
    if not table.replace("_", "").isalnum() or not 0 < uid_first <= uid_last:
        raise ValueError("bad table name or uid range")
    plist = sorted({int(p) for p in ports if 0 < int(p) < 65536})
    v4 = sorted({str(ipaddress.ip_network(h, strict=False)) for h in hosts if ":" not in h})
    v6 = sorted({str(ipaddress.ip_network(h, strict=False)) for h in hosts if ":" in h})
    uids = f"{uid_first}-{uid_last}"
    lines = [
        f"table inet {table} {{",
        "    chain workspace_egress {",
        "        type filter hook output priority 0; policy accept;",
    ]
    if plist:
        pset = ", ".join(map(str, plist))
        lines += [
            f"        meta skuid {uids} tcp dport {{ {pset} }} counter reject with tcp reset",
            f"        meta skuid {uids} udp dport {{ {pset} }} counter reject",
        ]
    if v4:
        lines.append(f"        meta skuid {uids} ip daddr {{ {', '.join(v4)} }} counter reject")
    if v6:
        lines.append(f"        meta skuid {uids} ip6 daddr {{ {', '.join(v6)} }} counter reject")
    lines += ["    }", "}", ""]
    return "\n".join(lines)


def available() -> bool:
    return shutil.which("nft") is not None


def apply(table: str, rules: str) -> None:
    """Replace ``table inet <table>`` atomically with ``rules`` (one ``nft -f`` transaction)."""
    script = f"table inet {table}\ndelete table inet {table}\n{rules}"
    proc = subprocess.run(
        ["nft", "-f", "-"], input=script.encode(), capture_output=True, check=False, timeout=30
    )
    if proc.returncode != 0:
        raise RuntimeError(f"nft refused the egress rules: {proc.stderr.decode(errors='replace').strip()}")


def remove(table: str) -> None:
    subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True, check=False, timeout=30)
