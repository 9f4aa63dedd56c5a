"""The dev CA and TLS contexts: mutual TLS accepts our certificates and refuses everything else."""

import asyncio
import os
import ssl
import stat

import pytest

from sagews.devpki import DevCA
from sagews.tls import client_context, peer_common_name, server_context


@pytest.fixture
def ca(tmp_path):
    return DevCA(tmp_path / "ca")


def test_keys_are_private_and_ca_reused(ca, tmp_path):
    pair = ca.issue("worker1")
    for key in (ca.ca_key_path, pair.key):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    again = DevCA(tmp_path / "ca")
    assert again.ca_cert_path.read_bytes() == ca.ca_cert_path.read_bytes()
    assert again.issue("worker1").cert.read_bytes() == pair.cert.read_bytes(), "valid certs are not reissued"


async def _handshake(server_ctx, client_ctx):
    """Serve one TLS connection on loopback; return the client's view (peer CN) or raise."""
    seen = asyncio.get_running_loop().create_future()

    async def handle(reader, writer):
        obj = writer.get_extra_info("ssl_object")
        if not seen.done():
            seen.set_result(peer_common_name(obj))
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        data = await reader.read()
        writer.close()
        # The server writes only after its handler ran, so "ok" means the handshake was accepted.
        return data, (seen.result() if seen.done() else None)
    finally:
        server.close()
        await server.wait_closed()


async def test_mutual_tls_accepts_appliance_certificates(ca):
    srv, cli = ca.issue("worker", client=False), ca.issue("backend", server=False)
    data, cn = await _handshake(
        server_context(srv.cert, srv.key, ca.ca_cert_path), client_context(cli.cert, cli.key, ca.ca_cert_path)
    )
    assert (data, cn) == (b"ok", "backend")


async def _refused(server_ctx, client_ctx) -> bool:
    """True when the server refused us: a TLS alert, a reset, or a stream closed before any data."""
    try:
        data, cn = await _handshake(server_ctx, client_ctx)
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return True
    return data == b"" and cn is None


async def test_client_without_certificate_is_refused(ca):
    srv = ca.issue("worker", client=False)
    assert await _refused(
        server_context(srv.cert, srv.key, ca.ca_cert_path), client_context(None, None, ca.ca_cert_path)
    )


async def test_certificate_from_another_ca_is_refused(ca, tmp_path):
    srv = ca.issue("worker", client=False)
    stranger = DevCA(tmp_path / "other").issue("mallory", server=False)
    assert await _refused(
        server_context(srv.cert, srv.key, ca.ca_cert_path),
        client_context(stranger.cert, stranger.key, ca.ca_cert_path),
    )
