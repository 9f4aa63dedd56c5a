"""Transport and protocol: mutual TLS, hello negotiation, request ids, and a fuzz of 10,000 frames."""

from __future__ import annotations

import json
import random
import socket
import ssl
import struct

import pytest
from worker_helpers import WorkerProc

from sagews.devpki import DevCA
from sagews.framing import encode
from sagews.worker.client import WorkerClient, WorkerError


def _raw_tls(worker: WorkerProc, cert: str | None, key: str | None, ca: str) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    raw = socket.create_connection(("127.0.0.1", worker.port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _gets_nothing(sock_factory: object) -> None:
    """Either the handshake fails or the first read does (TLS 1.3 reports the refusal after it)."""
    try:
        s = sock_factory()  # type: ignore[operator]
    except (ssl.SSLError, ConnectionError):
        return
    try:
        s.sendall(encode({"type": "hello", "id": 1, "versions": [1]}))
        data = s.recv(65536)
        assert data == b"", "a client without a valid certificate got an answer"
    except (ssl.SSLError, ConnectionError):
        pass
    finally:
        s.close()


def test_client_without_certificate_gets_nothing(worker: WorkerProc, tmp_path: object) -> None:
    ca = worker.config["ca"]
    _gets_nothing(lambda: _raw_tls(worker, None, None, ca))
    rogue = DevCA(f"{tmp_path}/rogue", name="rogue CA").issue("backend", server=False)
    _gets_nothing(lambda: _raw_tls(worker, str(rogue.cert), str(rogue.key), ca))
    # a certificate from our CA that is not for clients (server-only extended key usage) is refused too
    server_only = worker.pki.issue("some-server", client=False)
    _gets_nothing(lambda: _raw_tls(worker, str(server_only.cert), str(server_only.key), ca))
    # and plain TCP gets nothing either
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as s:
        s.sendall(encode({"type": "hello", "id": 1, "versions": [1]}))
        s.settimeout(10)
        data = s.recv(65536)
        assert not data.startswith(b"\x00")  # a TLS alert at most, never a frame


def test_hello_negotiation(worker: WorkerProc) -> None:
    with worker.client(hello=False) as c:
        with pytest.raises(WorkerError) as ei:
            c.request("status")
        assert ei.value.code == "hello_required"
        with pytest.raises(WorkerError) as ei:
            c.request("hello", versions=[99])
        assert ei.value.code == "bad_version"
        assert c.request("hello", versions=[1, 99])["version"] == 1
        assert c.request("status")["type"] == "status"


def test_ids_and_errors(client: WorkerClient) -> None:
    client.send({"type": "status", "id": "abc"})
    assert client.recv()["re"] == "abc"  # type: ignore[index]
    client.send({"type": "status"})
    reply = client.recv()
    assert reply == {"type": "error", "re": None, "code": "bad_message", "message": reply["message"]}  # type: ignore[index]
    client.send({"type": "nope", "id": 3})
    assert client.recv()["code"] == "unknown_type"  # type: ignore[index]
    client.send_raw(struct.pack(">I", 5) + b"{nope")
    assert client.recv()["code"] == "bad_json"  # type: ignore[index]
    client.send_raw(struct.pack(">I", 3) + b"[1]")
    assert client.recv()["code"] == "bad_message"  # type: ignore[index]
    assert client.request("status")["type"] == "status"  # the connection survived all of that


SEEDS = [
    {"type": "hello", "id": 1, "versions": [1]},
    {"type": "status", "id": 2},
    {"type": "exec", "id": 3, "session": "nope", "code": "1+1"},
    {"type": "ls", "id": 4, "session": "nope", "path": "."},
    {"type": "read", "id": 5, "session": "nope", "path": "a", "commit": "HEAD"},
    {"type": "write", "id": 6, "session": "nope", "path": "a", "text": "x"},
    {"type": "interrupt", "id": 7, "session": "nope"},
    {"type": "save", "id": 8, "session": "nope", "message": "m"},
    {"type": "restore", "id": 9, "session": "nope", "bundles": ["eA=="]},
    {"type": "history", "id": 10, "session": "nope", "limit": 3},
    {"type": "kill", "id": 11, "session": "nope"},
]
WEIRD: list[object] = [
    None,
    True,
    -1,
    2**70,
    1.5,
    "",
    "x" * 300,
    [],
    {},
    [1, "a"],
    {"a": {"b": []}},
    "\u0000",
    "..",
    "/",
]


def _mutate(rng: random.Random) -> bytes:
    """One frame body: garbage, wrong top-level types, wrong field types, unknown types, byte flips."""
    choice = rng.random()
    msg = json.loads(json.dumps(rng.choice(SEEDS)))
    if choice < 0.15:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
    if choice < 0.25:
        return json.dumps(rng.choice(WEIRD)).encode()
    if choice < 0.35:
        msg["type"] = rng.choice([*WEIRD, "OPEN", "__init__", "_file_op", "do_status", "execx", "shutdown"])
    elif choice < 0.75:
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(
                [*msg.keys(), "extra", "session", "bundles", "engine", "path", "commit", "limit"]
            )
            if key == "type":
                continue
            msg[key] = rng.choice(WEIRD)
    elif choice < 0.85:
        msg.pop(rng.choice(list(msg)), None)
    body = json.dumps(msg).encode()
    if choice >= 0.85:
        b = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.getrandbits(8)
        body = bytes(b)
    return body


def test_fuzz_10000_frames(worker: WorkerProc) -> None:
    rng = random.Random(20261128)
    sent = replies = 0
    in_band = 9_400
    with worker.client() as c:
        batch = 200
        for _ in range(in_band // batch):
            frames = [_mutate(rng) for _ in range(batch)]
            c.send_raw(b"".join(struct.pack(">I", len(f)) + f for f in frames))
            sent += batch
            for _ in range(batch):
                msg = c.recv()
                assert msg is not None, "the worker closed a connection on an in-band frame"
                assert msg["type"] in {"error", "hello", "status"}, msg
                if msg["type"] == "error":
                    assert msg["code"] and msg["message"]
                    assert msg["code"] != "internal", msg  # every bad input is a clear client error
                replies += 1
        assert c.request("status")["type"] == "status"
    # out-of-band damage, each on its own connection: oversized, truncated, desynchronised, raw noise
    for i in range(600):
        c = worker.client(hello=i % 2 == 0)
        kind = i % 4
        body = _mutate(rng)
        if kind == 0:
            c.send_raw(
                struct.pack(">I", worker.config.get("max_frame", 16 << 20) + 1 + rng.randrange(1 << 20))
            )
            msg = c.recv()
            assert msg is not None
            assert msg["code"] == "too_large"
            assert c.recv() is None  # and the connection is closed
        elif kind == 1:
            c.send_raw(struct.pack(">I", len(body) + 10) + body)  # truncated, then we hang up
        elif kind == 2:
            c.send_raw(struct.pack(">I", max(0, len(body) - 3)) + body + body)
        else:
            c.send_raw(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))))
        sent += 1
        c.close()
    assert sent == 10_000
    assert replies == in_band
    assert worker.proc.poll() is None, "the worker crashed"
    with worker.client() as c:
        sid = c.request("open", workspace="after-fuzz")["session"]
        assert c.execute(sid, "6 * 7")["result"]["text/plain"] == "42"
        c.request("close", session=sid)
    assert "Traceback" not in worker.logtext()


@pytest.mark.parametrize("workspace", ["../etc", "", 5, None, "a" * 65, ".hidden", "a/b", "x\x00"])
def test_open_refuses_bad_workspace_names(client: WorkerClient, workspace: object) -> None:
    with pytest.raises(WorkerError) as ei:
        client.request("open", workspace=workspace)
    assert ei.value.code == "bad_field"


@pytest.mark.parametrize("engine", ["ruby", 1, ["sage"]])
def test_open_refuses_bad_engines(client: WorkerClient, engine: object) -> None:
    with pytest.raises(WorkerError) as ei:
        client.request("open", workspace="engine-check", engine=engine)
    assert ei.value.code == "bad_field"


def test_fuzz_fields_against_a_real_session(client: WorkerClient) -> None:
    """600 file requests with mutated fields on a live session: only clear client errors, never internal."""
    sid = client.request("open", workspace="fuzz-real")["session"]
    client.request("write", session=sid, path="f.txt", text="x")
    rng = random.Random(7)
    seeds = [
        {"type": "ls", "path": "."},
        {"type": "read", "path": "f.txt"},
        {"type": "read", "path": "f.txt", "commit": "HEAD"},
        {"type": "write", "path": "g.txt", "text": "y"},
        {"type": "write", "path": "h.bin", "b64": "AAEC"},
        {"type": "rename", "src": "g.txt", "dst": "g2.txt"},
        {"type": "delete", "path": "g2.txt"},
        {"type": "history", "limit": 2},
        {"type": "interrupt"},
    ]
    codes: dict[str, int] = {}
    for i in range(600):
        msg = dict(rng.choice(seeds))
        for _ in range(rng.randint(0, 2)):
            key = rng.choice([k for k in msg if k != "type"] or ["path"])
            msg[key] = rng.choice(
                [*WEIRD, "f.txt", "../f.txt", "/f.txt", "sub/../f.txt", ".git/HEAD", "-x", "HEAD:x"]
            )
        frames = client.call(str(msg.pop("type")), session=sid, **msg)
        reply = frames[-1]
        if reply["type"] == "error":
            assert reply["code"] != "internal", (i, msg, reply)
            codes[reply["code"]] = codes.get(reply["code"], 0) + 1
    assert client.execute(sid, "'still here'")["result"]["text/plain"] == "'still here'"
    client.request("close", session=sid)
    assert codes  # the mutations did hit the error paths


def test_fuzz_session_requests(client: WorkerClient) -> None:
    """exec/save/restore/restart/open with mutated fields: clear errors, and the session keeps working."""
    sid = client.request("open", workspace="fuzz-session")["session"]
    rng = random.Random(11)
    seeds = [
        {"type": "exec", "code": "1", "engine": "python"},
        {"type": "save", "message": "m"},
        {"type": "restore", "bundles": ["eA=="]},
        {"type": "open", "workspace": "fuzz-session", "engine": "python"},
    ]
    values = [*WEIRD, "python", "sage", "fuzz-session", ["!!"], ["eA==", 3], "1/0", "print(1)"]
    for i in range(200):
        msg = dict(rng.choice(seeds))
        for _ in range(rng.randint(1, 2)):
            msg[rng.choice([k for k in msg if k != "type"])] = rng.choice(values)
        reply = client.call(str(msg.pop("type")), session=sid, **msg)[-1]
        if reply["type"] == "error":
            assert reply["code"] != "internal", (i, msg, reply)
            assert reply["code"] != "session_dead", (i, msg, reply)  # no input may crash the engine
        else:
            assert reply.get("status") != "died", (i, msg, reply)
    client.request("restart", session=sid)
    assert client.execute(sid, "'ok'")["result"]["text/plain"] == "'ok'"
    client.request("close", session=sid)
