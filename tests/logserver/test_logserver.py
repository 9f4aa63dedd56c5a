"""The log server with real processes, real TLS and a real PostgreSQL started by the test."""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest

from sagews import framing
from sagews.db import migrate
from sagews.logserver.client import LogServerHandler
from tests.fixtures.postgres import PostgresCluster

from .conftest import LogServerProc, Probe, db_counts, wait_for


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    lg = logging.getLogger(f"sagews.test.{name}")
    lg.propagate = False
    lg.setLevel(logging.DEBUG)
    lg.handlers = [handler]
    return lg


def _stored(url: str, n: int, timeout: float = 60.0) -> tuple[int, int, set[str]]:
    wait_for(lambda: db_counts(url)[0] >= n, timeout, f"{n} rows in the database")
    return db_counts(url)


def test_roundtrip_and_fields(
    log_db: str, make_server: Callable[..., LogServerProc], client_config: Any
) -> None:
    server = make_server(log_db)
    h = LogServerHandler(client_config([server]), "svc-a", host="host-a")
    lg = _logger("roundtrip", h)
    try:
        lg.info("hello %s", "world", extra={"ignored": 1})
        try:
            raise ValueError("boom")
        except ValueError:
            lg.exception("failed")
        assert h.flush(20)
        rows, distinct, msgs = _stored(log_db, 2)
        assert (rows, distinct) == (2, 2)
        assert msgs == {"hello world", "failed"}
        assert h.metrics["acked"] == 2
    finally:
        h.close()
    from sagews.db import make_engine

    engine = make_engine(log_db)
    with engine.connect() as conn:
        exc = conn.exec_driver_sql(
            "SELECT exc, service, host, level FROM log_records WHERE message='failed'"
        ).one()
    engine.dispose()
    assert "ValueError: boom" in exc[0] and exc[1:] == ("svc-a", "host-a", logging.ERROR)


def test_primary_killed_mid_stream_exactly_once(
    log_db: str, make_server: Callable[..., LogServerProc], client_config: Any
) -> None:
    primary, backup = make_server(log_db), make_server(log_db)
    h = LogServerHandler(client_config([primary, backup], batch_max=200), "svc")
    lg = _logger("failover", h)
    n = 20_000
    try:
        for i in range(n // 4):
            lg.info("m%d", i)
        wait_for(lambda: db_counts(log_db)[0] > 0, 30, "first records stored")
        for i in range(n // 4, n // 2):
            lg.info("m%d", i)
        primary.kill()  # SIGKILL while batches are in flight
        for i in range(n // 2, n):
            lg.info("m%d", i)
        assert h.flush(60)
        rows, distinct, msgs = _stored(log_db, n)
        assert rows == distinct == n
        assert msgs == {f"m{i}" for i in range(n)}
        assert h.metrics["failovers"] >= 1 or h.metrics["send_failures"] >= 1
        assert h.metrics["dropped_queue_full"] == 0
    finally:
        h.close()


def test_all_servers_down_then_one_back_replays_spool(
    log_db: str, make_server: Callable[..., LogServerProc], client_config: Any
) -> None:
    a, b = make_server(log_db), make_server(log_db)
    h = LogServerHandler(client_config([a, b]), "svc")
    lg = _logger("spool", h)
    try:
        lg.info("before")
        assert h.flush(20)
        assert h.metrics["acked"] == 1, (h.metrics, h.last_error)
        a.kill()
        b.kill()
        n = 3000
        for i in range(n):
            lg.info("s%d", i)
        wait_for(lambda: h.metrics["spooled"] >= n, 30, "records spooled on the client")
        assert db_counts(log_db)[0] == 1
        b.start()  # same port as before
        rows, distinct, msgs = _stored(log_db, n + 1)
        assert rows == distinct == n + 1
        assert msgs == {"before"} | {f"s{i}" for i in range(n)}
        wait_for(lambda: not h.spool.pending(), 10, "client spool emptied")
    finally:
        h.close()


def test_db_down_server_spools_and_replays(
    log_db: str,
    postgres: PostgresCluster,
    make_server: Callable[..., LogServerProc],
    client_config: Any,
    stats: Callable[[LogServerProc], dict[str, int]],
) -> None:
    server = make_server(log_db)
    h = LogServerHandler(client_config([server]), "svc")
    lg = _logger("dbdown", h)
    try:
        lg.info("up")
        assert h.flush(20)
        postgres.stop()
        n = 2000
        try:
            for i in range(n):
                lg.info("d%d", i)
            wait_for(lambda: h.metrics["acked"] >= n + 1, 30, "server acks (spooled) while the DB is down")
            assert stats(server)["spooled"] >= n
            assert h.metrics["spooled"] == 0  # the client never needed its own spool
        finally:
            postgres.start()
        rows, distinct, msgs = _stored(log_db, n + 1)
        assert rows == distinct == n + 1
        assert msgs == {"up"} | {f"d{i}" for i in range(n)}
        assert stats(server)["replayed"] >= n
    finally:
        h.close()


def test_records_sent_before_the_schema_exists_are_kept_until_it_does(
    pg_url: str,
    make_server: Callable[..., LogServerProc],
    client_config: Any,
    stats: Callable[[LogServerProc], dict[str, int]],
) -> None:
    """A log server deployed before `sagews db upgrade` ran (or a DB restored without tables) spools
    what it acknowledges instead of dropping it, and stores it once the tables are there."""
    server = make_server(pg_url)
    h = LogServerHandler(client_config([server]), "svc")
    lg = _logger("noschema", h)
    try:
        for i in range(50):
            lg.info("early%d", i)
        wait_for(lambda: h.metrics["acked"] >= 50, 30, "acks while the tables are missing")
        assert stats(server)["spooled"] >= 50
        migrate.upgrade(pg_url)
        rows, distinct, msgs = _stored(pg_url, 50)
        assert rows == distinct == 50 and msgs == {f"early{i}" for i in range(50)}
    finally:
        h.close()


def _record(i: int, **kw: Any) -> dict[str, Any]:
    r = {"rid": f"probe-{i}", "ts": time.time(), "service": "probe", "host": "h", "pid": 1, "level": 20,
         "logger": "p", "msg": f"p{i}"}  # fmt: skip
    r.update(kw)
    return r


def test_hostile_input_is_refused_and_counted(
    log_db: str,
    make_server: Callable[..., LogServerProc],
    probe: Callable[..., Probe],
    stats: Callable[[LogServerProc], dict[str, int]],
) -> None:
    server = make_server(log_db, max_frame=1 << 20)

    # garbage bytes: read as a huge length -> too_large, connection closed
    p = probe(server)
    p.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert p.read()["code"] == "too_large"
    with pytest.raises((ConnectionError, OSError)):
        p.read()
    p.close()

    # a 100 MB line: refused after its header, nothing buffered
    p = probe(server)
    p.send(struct.pack(">I", 100 << 20) + b"x" * 65536)
    assert p.read()["code"] == "too_large"
    p.close()

    # truncated frame, then the peer goes away
    p = probe(server)
    p.send(struct.pack(">I", 100) + b'{"type":')
    p.close()

    # invalid JSON and a non-object: error, and the connection keeps working
    p = probe(server)
    body = b"{not json"
    assert p.request({"type": "nope"})["code"] == "bad_message"
    p.send(struct.pack(">I", len(body)) + body)
    assert p.read()["code"] == "bad_json"
    p.send(struct.pack(">I", 2) + b"[]")
    assert p.read()["code"] == "bad_message"

    # wrong field types are rejected per record; good records in the same batch are stored
    bad = [
        _record(1, ts="yesterday"), _record(2, pid="1"), _record(3, level=True), _record(4, rid=""),
        _record(5, msg=None), _record(6, rid="x" * 65), _record(7, extra=[1]), "not an object",
        _record(8, service=None),
    ]  # fmt: skip
    good = [
        _record(10),
        _record(11, msg="y" * 100_000, extra={"k": "z" * 20_000}),
        _record(12, msg="nul\x00"),
    ]
    ack = p.request({"type": "records", "batch": 7, "records": bad + good})
    assert ack == {"type": "ack", "batch": 7, "accepted": 3, "rejected": len(bad), "spooled": False}
    p.close()

    # a client without a certificate is refused in the handshake
    q: Probe | None = None
    with pytest.raises((OSError, ConnectionError)):
        q = probe(server, cert=False)  # TLS 1.3: the server's refusal arrives on the first read
        q.request({"type": "stats"})
    if q is not None:
        q.close()

    wait_for(lambda: stats(server).get("tls_refused", 0) >= 1, 10, "tls_refused counted")
    counters = stats(server)
    assert server.alive
    assert counters["too_large"] >= 2
    assert counters["bad_json"] == 1 and counters["bad_message"] >= 2
    assert counters["records_rejected"] == len(bad)
    assert counters["records_truncated"] >= 1
    assert counters["truncated"] >= 1
    assert db_counts(log_db)[2] == {"p10", "y" * 32768 + "...[truncated]", "nul\\x00"}


def test_duplicate_rids_are_stored_once(
    log_db: str, make_server: Callable[..., LogServerProc], probe: Callable[..., Probe]
) -> None:
    a, b = make_server(log_db), make_server(log_db)
    batch = [_record(i) for i in range(50)]
    for server in (a, b, a):
        p = probe(server)
        assert p.request({"type": "records", "batch": 1, "records": batch})["accepted"] == 50
        p.close()
    rows, distinct, _ = db_counts(log_db)
    assert rows == distinct == 50


def test_pipelined_frames_are_answered_in_order(
    log_db: str, make_server: Callable[..., LogServerProc], probe: Callable[..., Probe]
) -> None:
    """A client may send several frames before reading a reply (the handler keeps up to its
    ``window`` batches unacknowledged): one reply per frame, in request order, each ack after its
    records are committed; a batch repeated while the first copy may still be uncommitted (possibly
    in the same transaction) is stored once."""
    server = make_server(log_db)
    p = probe(server)
    batches = [[_record(100 * b + i) for i in range(100)] for b in range(5)]
    frames = [framing.encode({"type": "records", "batch": b, "records": rs}) for b, rs in enumerate(batches)]
    p.send(b"".join([*frames[:3], struct.pack(">I", 5) + b"{nope", frames[3], frames[1], frames[4]]))
    p.send(framing.encode({"type": "stats"}))
    replies = [p.read() for _ in range(8)]
    p.close()
    assert [(r["type"], r.get("batch")) for r in replies] == [
        ("ack", 0), ("ack", 1), ("ack", 2), ("error", None),
        ("ack", 3), ("ack", 1), ("ack", 4), ("stats", None),
    ]  # fmt: skip
    assert all(r["accepted"] == 100 for r in replies if r["type"] == "ack")
    rows, distinct, _ = db_counts(log_db)  # every ack came after COMMIT: no waiting needed
    assert rows == distinct == 500


def test_frame_encoding_is_shared() -> None:
    assert framing.encode({"a": 1})[:4] == struct.pack(">I", 7)


def test_server_spool_survives_a_server_crash(
    log_db: str,
    postgres: PostgresCluster,
    make_server: Callable[..., LogServerProc],
    probe: Callable[..., Probe],
) -> None:
    server = make_server(log_db)
    postgres.stop()
    try:
        p = probe(server)
        ack = p.request({"type": "records", "batch": 1, "records": [_record(i) for i in range(300)]})
        p.close()
        assert ack["spooled"] is True and ack["accepted"] == 300
        server.kill()  # acknowledged records now live only in the server's fsync'd spool
    finally:
        postgres.start()
    server.start()  # same spool directory: replayed once the DB answers
    rows, distinct, _ = _stored(log_db, 300)
    assert rows == distinct == 300
