"""TLS contexts for sagews' internal links (backend->worker, services->log server).

Every internal link is mutually authenticated: both ends present a certificate signed by the
appliance CA (issued by the `pki` Ansible role, or by :mod:`sagews.devpki` for `sagews dev`
and tests). A peer without such a certificate is refused during the handshake.
"""

from __future__ import annotations

import ssl
from pathlib import Path

StrPath = str | Path


def server_context(
    cert: StrPath, key: StrPath, ca: StrPath, *, require_client_cert: bool = True
) -> ssl.SSLContext:
    """A server-side context: TLS 1.2+, our certificate, client certificates required and verified."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(cafile=str(ca))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    return ctx


def client_context(
    cert: StrPath | None, key: StrPath | None, ca: StrPath, *, check_hostname: bool = True
) -> ssl.SSLContext:
    """A client context: verifies the server against the appliance CA, presents our certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(ca))
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key is not None else None)
    return ctx


def peer_common_name(sslobj: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    """The subject CN of the verified peer certificate, or None."""
    cert = sslobj.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
