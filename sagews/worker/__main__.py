"""`sagews worker` / `sagews-worker` (the server) and `sagews worker-call` (an operator's client)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from sagews.worker.config import load


def serve_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sagews worker", description="run the sagews compute worker (as root)")
    p.add_argument("--config", help="TOML or JSON configuration file (defaults otherwise)")
    p.add_argument("--port", type=int, help="override the configured port (0: any free port)")
    p.add_argument("--check", action="store_true", help="check the config file and exit (0: usable)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = load(args.config)
    if args.check:
        missing = [f for f in (config.cert, config.key, config.ca) if not Path(f).is_file()]
        for f in missing:
            print(f"sagews-worker: missing file: {f}")
        return 1 if missing else 0
    if args.port is not None:
        config.port = args.port
    from sagews import sdnotify
    from sagews.worker.server import serve

    handler = None
    if config.logging.get("servers"):
        from sagews.logserver.client import install
        from sagews.logserver.config import ClientConfig

        handler = install(ClientConfig(**config.logging), "worker")

    def ready(port: int) -> None:
        sdnotify.ready(f"serving on {config.host}:{port}")

    try:
        try:
            import uvloop
        except ImportError:  # optional: about 25 % less latency per hop
            asyncio.run(serve(config, ready))
        else:
            uvloop.run(serve(config, ready))
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
    return 0


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def call_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="sagews worker-call",
        description="send one request to a worker and print every reply frame as JSON lines, e.g. "
        "`sagews worker-call status` or `sagews worker-call exec session=ID code='1+1'`",
    )
    p.add_argument("--config", help="worker config file: host, port, and the CA are taken from it")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--cert", required=True, help="client certificate signed by the appliance CA")
    p.add_argument("--key", required=True)
    p.add_argument("--ca", help="CA certificate (default: the config's)")
    p.add_argument("type", help="request type: status, open, exec, ls, read, save, history, ...")
    p.add_argument("fields", nargs="*", help="key=value (value parsed as JSON when it is JSON)")
    args = p.parse_args(argv)
    config = load(args.config)
    from sagews.worker.client import WorkerClient

    fields = {}
    for item in args.fields:
        k, _, v = item.partition("=")
        fields[k] = _value(v)
    with WorkerClient(
        args.host or config.host,
        args.port or config.port,
        cert=args.cert,
        key=args.key,
        ca=args.ca or config.ca,
    ) as client:
        frames = client.call(args.type, **fields)
    for f in frames:
        print(json.dumps(f))
    return 1 if frames[-1]["type"] == "error" else 0


if __name__ == "__main__":
    sys.exit(serve_main())
