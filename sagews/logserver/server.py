"""The log server: TLS (mutual) socket server, JSON frames in, batched idempotent DB writes.

One asyncio loop reads connections; one writer task owns the database (a single DB thread, at
most ``db_connections`` pooled connections) and the local spool. A batch is acknowledged only
after it was committed to the database or fsync'd to the spool. While the database is down,
batches go to the spool; a probe every ``db_retry_seconds`` replays it when the database is back.
See docs/protocol-logserver.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
from typing import Any

from sagews import framing, sdnotify, tls
from sagews.db.config import DBConfig, env_url
from sagews.db.engine import make_engine
from sagews.logserver import records as rec
from sagews.logserver import store
from sagews.logserver.config import ServerConfig, load_own_logging, load_server
from sagews.logserver.spool import Spool

log = logging.getLogger("sagews.logserver")

# an entry of a connection's reply queue: a message to send, or (batch id, durability future,
# accepted, rejected) for an ack sent once the future resolves
Reply = dict[str, Any] | tuple[Any, "asyncio.Future[str]", int, int]


class LogServer:
    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.counters: collections.Counter[str] = collections.Counter()
        self.limits = rec.Limits(cfg.max_message, cfg.max_extra)
        self.ssl = tls.server_context(cfg.cert, cfg.key, cfg.ca)
        dbcfg = DBConfig(**cfg.db)
        dbcfg.pool_size, dbcfg.max_overflow = cfg.db_connections, 0
        self.engine = make_engine(dbcfg)
        self.spool = Spool(cfg.spool_dir, int(cfg.spool_max_mb * (1 << 20)))
        self.db_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="logserver-db")
        self.db_up = True
        self.queue: asyncio.Queue[tuple[list[dict[str, Any]], str, asyncio.Future[str]]] = asyncio.Queue(
            cfg.queue_frames
        )
        self._listener: socket.socket | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.port = cfg.port
        self._tasks: list[asyncio.Task[None]] = []

    # ---- database side (runs in the single DB thread) ----

    def _write(self, rows: list[dict[str, Any]], csv_text: str | None = None) -> str:
        """Store rows (DB, else spool). Returns "stored" or "spooled". ``csv_text``: the rows as
        ``store.to_csv`` makes them, built on the event loop while this thread was busy."""
        if self.db_up and self.spool.pending():
            self._try_replay()
        if self.db_up:
            try:
                added = store.insert(self.engine, rows, csv_text)
                self.counters["stored"] += added
                self.counters["duplicates"] += len(rows) - added
                return "stored"
            except store.UNAVAILABLE as exc:
                self._mark_down(exc)
            except Exception as exc:  # bad data that validation let through: isolate the culprits
                self.counters["db_errors"] += 1
                log.warning("batch insert failed, retrying row by row: %s", exc)
                return self._write_one_by_one(rows)
        self.spool.append(rows)
        self.counters["spooled"] += len(rows)
        return "spooled"

    def _write_one_by_one(self, rows: list[dict[str, Any]]) -> str:
        for r in rows:
            try:
                added = store.insert(self.engine, [r])
                self.counters["stored"] += added
                self.counters["duplicates"] += 1 - added
            except store.UNAVAILABLE as exc:
                self._mark_down(exc)
                self.spool.append([r])
                self.counters["spooled"] += 1
            except Exception:
                self.counters["records_rejected_db"] += 1
        return "stored"

    def _mark_down(self, exc: BaseException) -> None:
        if self.db_up:
            log.warning("database unavailable, spooling: %s", str(exc).splitlines()[0] if str(exc) else exc)
        self.db_up = False
        self.counters["db_unavailable"] += 1
        self.engine.dispose()

    def _try_replay(self) -> None:
        def send(rows: list[dict[str, Any]]) -> None:
            added = store.insert(self.engine, rows)
            self.counters["stored"] += added
            self.counters["duplicates"] += len(rows) - added
            self.counters["replayed"] += len(rows)

        try:
            self.spool.replay(send)
        except store.UNAVAILABLE as exc:
            self._mark_down(exc)

    def _probe(self) -> None:
        try:
            store.ping(self.engine)
        except store.UNAVAILABLE:
            self.engine.dispose()
            return
        log.info("database reachable again, replaying the spool")
        self.db_up = True
        self._try_replay()

    # ---- asyncio side ----

    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            n = len(items[0][0])
            while not self.queue.empty() and n < self.cfg.batch_rows:
                items.append(self.queue.get_nowait())
                n += len(items[-1][0])
            rows = [r for batch, _, _ in items for r in batch]
            text = "".join(t for _, t, _ in items)
            try:
                outcome = await loop.run_in_executor(self.db_thread, self._write, rows, text)
            except Exception as exc:  # spool failure (disk full...): no ack, the client retries
                log.exception("cannot store a batch")
                for _, _, fut in items:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for _, _, fut in items:
                if not fut.done():
                    fut.set_result(outcome)

    async def _prober(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.cfg.db_retry_seconds)
            if not self.db_up or self.spool.pending():
                with contextlib.suppress(Exception):
                    await loop.run_in_executor(self.db_thread, self._probe)
            self.counters["db_down"] = 0 if self.db_up else 1

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None  # noqa: S101
        while True:
            sock, _addr = await loop.sock_accept(self._listener)
            task = asyncio.create_task(self._accept(sock))
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)

    async def _accept(self, sock: socket.socket) -> None:
        """TLS on the accepted socket before any byte is read (a handshake failure is counted)."""
        self.counters["connections"] += 1
        loop = asyncio.get_running_loop()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = asyncio.StreamReader(limit=1 << 20, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=self.ssl, ssl_handshake_timeout=self.cfg.handshake_timeout
            )
        except (ssl.SSLError, OSError, TimeoutError, ConnectionError):
            self.counters["tls_refused"] += 1
            sock.close()
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await self._handle(reader, writer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_obj = writer.get_extra_info("ssl_object")
        peer = tls.peer_common_name(ssl_obj) if ssl_obj is not None else None
        if self.cfg.allowed_clients and peer not in self.cfg.allowed_clients:
            self.counters["not_allowed"] += 1
            writer.write(framing.encode({"type": "error", "code": "forbidden", "message": "not allowed"}))
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()
            return
        # Replies leave in request order from one task; the reader goes on with the next frame while
        # earlier batches wait for their COMMIT (clients pipeline up to their window).
        replies: asyncio.Queue[Reply | None] = asyncio.Queue(self.cfg.max_pending_replies)
        sender = asyncio.create_task(self._reply_loop(replies, writer))
        try:
            await self._serve(reader, replies)
        except framing.FrameError as exc:
            self.counters[exc.code] += 1
            await replies.put({"type": "error", "code": exc.code, "message": exc.message})
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError, TimeoutError):
            self.counters["truncated"] += 1
        finally:
            if not sender.done():
                await replies.put(None)
            with contextlib.suppress(Exception):
                await sender
            writer.close()

    async def _reply_loop(self, replies: asyncio.Queue[Reply | None], writer: asyncio.StreamWriter) -> None:
        broken = False
        while (item := await replies.get()) is not None:
            if isinstance(item, tuple):  # a batch: its ack once it is durable
                batch_id, fut, accepted, rejected = item
                try:
                    outcome = await fut
                    msg: dict[str, Any] = {"type": "ack", "batch": batch_id, "accepted": accepted,
                                           "rejected": rejected, "spooled": outcome == "spooled"}  # fmt: skip
                except Exception:
                    msg = {"type": "error", "code": "unavailable", "batch": batch_id,
                           "message": "cannot store now, retry"}  # fmt: skip
            else:
                msg = item
            if broken:
                continue  # keep draining: the reader must never wait on a full queue for a dead peer
            try:
                writer.write(framing.encode(msg))
                await writer.drain()
            except (ConnectionError, ssl.SSLError, OSError):
                broken = True
                writer.close()  # the reader sees the end of the stream

    async def _serve(self, reader: asyncio.StreamReader, replies: asyncio.Queue[Reply | None]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                msg = await asyncio.wait_for(
                    framing.read_frame(reader, self.cfg.max_frame), self.cfg.idle_timeout
                )
            except framing.FrameError as exc:
                if exc.code == "too_large":
                    raise  # the body was not read: the stream is out of step, close
                self.counters[exc.code] += 1  # bad_json / bad_message: the next frame is still aligned
                await replies.put({"type": "error", "code": exc.code, "message": exc.message})
                continue
            if msg is None:
                return
            self.counters["frames"] += 1
            kind = msg.get("type")
            if kind == "stats":
                self.counters["spool_dropped"] = self.spool.dropped
                await replies.put({"type": "stats", "counters": dict(self.counters), "db_up": self.db_up})
                continue
            if kind != "records" or not isinstance(msg.get("records"), list):
                self.counters["bad_message"] += 1
                await replies.put({"type": "error", "code": "bad_message", "message": "unknown message"})
                continue
            batch_id = msg.get("batch")
            raw = msg["records"]
            if len(raw) > self.cfg.max_records_per_frame:
                self.counters["too_many_records"] += 1
                await replies.put(
                    {"type": "error", "code": "too_many_records", "batch": batch_id, "message": "split it"}
                )
                continue
            good: list[dict[str, Any]] = []
            rejected = 0
            for r in raw:
                try:
                    clean, cut = rec.validate(r, self.limits)
                except rec.Invalid:
                    rejected += 1
                    continue
                good.append(clean)
                self.counters["records_truncated"] += cut
            self.counters["records_received"] += len(raw)
            self.counters["records_rejected"] += rejected
            fut: asyncio.Future[str] = loop.create_future()
            if good:
                # the CSV for COPY is built here, on the loop, while the DB thread runs the previous batch
                await self.queue.put((good, store.to_csv(good), fut))  # waits when the writer is behind
            else:
                fut.set_result("stored")
            await replies.put((batch_id, fut, len(good), rejected))  # waits when too many are pending

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._writer()), asyncio.create_task(self._prober())]
        self._listener = socket.create_server((self.cfg.host, self.cfg.port), backlog=512)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._tasks.append(asyncio.create_task(self._accept_loop()))

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for t in self._tasks:
            t.cancel()
        self.db_thread.shutdown(wait=True)
        self.spool.close()
        self.engine.dispose()


async def serve(cfg: ServerConfig) -> None:
    server = LogServer(cfg)
    await server.start()
    print(f"sagews-logserver listening on {cfg.host}:{server.port}", flush=True)
    log.info("sagews-logserver listening on %s:%d", cfg.host, server.port)
    sdnotify.ready(f"serving on {cfg.host}:{server.port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def apply_db_url(cfg: ServerConfig, cli_url: str | None = None) -> None:
    """The database URL: --db-url, else $SAGEWS_DB_URL (deployments: /etc/sagews/database.env), else the
    config file's [logserver.db] url."""
    url = cli_url or env_url()
    if url:
        cfg.db["url"] = url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sagews-logserver", description="sagews log server")
    parser.add_argument("--config", help="TOML/JSON file with a [logserver] table")
    parser.add_argument("--port", type=int)
    parser.add_argument("--db-url")
    parser.add_argument("--check", action="store_true", help="check the config file and exit (0: usable)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    cfg = load_server(args.config)
    if args.check:
        client = load_own_logging(args.config)
        files = [cfg.cert, cfg.key, cfg.ca] + ([client.cert, client.key, client.ca] if client else [])
        missing = [f for f in files if f and not os.path.isfile(f)]
        for f in missing:
            print(f"sagews-logserver: missing file: {f}")
        return 1 if missing else 0
    if args.port is not None:
        cfg.port = args.port
    apply_db_url(cfg, args.db_url)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = None
    client = load_own_logging(args.config)
    if client is not None and client.servers:
        # its own records go through the log servers too (itself first, then the others): they land in
        # the same table as everyone else's. Nothing here logs per stored batch (a record per batch
        # would make the next batch): only start-up, spooling and database outages are logged.
        from sagews.logserver.client import install

        handler = install(client, "logserver")
    try:
        import uvloop  # the read/ack path is loop-bound: uvloop cuts its cost (docs/benchmarks.md)
    except ImportError:
        uvloop = None
    try:
        with contextlib.suppress(KeyboardInterrupt):
            if uvloop is not None:
                uvloop.run(serve(cfg))
            else:
                asyncio.run(serve(cfg))
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
