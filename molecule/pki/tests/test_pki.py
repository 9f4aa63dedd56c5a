"""Certificates as the services see them: signed by the sagews CA, right names, private keys, and
reissued only when a certificate is new, changed or about to expire (see side_effect.yml)."""

import pytest

DIR = "/etc/ssl/sagews"
EXPECTED = {  # playbooks/pki.yml: what each group gets
    "pki-a": {"server", "worker-client", "logserver-client", "postgresql-client"},
    "pki-b": {"postgresql", "server", "logserver-client", "postgresql-client", "etcd"},  # + its etcd member
    "pki-c": {"worker", "logserver-client"},  # the worker's own server certificate
}
ADDRESSES = {"pki-a": "172.30.3.10", "pki-b": "172.30.3.11", "pki-c": "172.30.3.12"}
OWNERS = {"postgresql": "postgres", "etcd": "etcd", "worker": "root"}


def name(host):
    return host.backend.get_hostname()


def text(host, cert):
    return host.check_output(f"openssl x509 -noout -text -in {DIR}/{cert}.crt")


def serials(host):
    """{file: (serial, fingerprint)} now and as recorded before side_effect's second run."""
    out = host.check_output(
        f"cd {DIR} && for c in *.crt; do printf '%s ' $c; "
        "openssl x509 -noout -serial -fingerprint -sha256 -in $c | tr '\\n' ' '; echo; done"
    )
    parse = lambda s: {ln.split()[0]: tuple(ln.split()[1:]) for ln in s.splitlines() if ln.strip()}  # noqa: E731
    before = host.file("/root/pki-before.txt")
    return parse(out), parse(before.content_string) if before.exists else None


def test_every_certificate_verifies_against_the_ca(host):
    for cert in EXPECTED[name(host)]:
        out = host.run(f"openssl verify -CAfile {DIR}/ca.crt {DIR}/{cert}.crt")
        assert out.rc == 0, out.stdout + out.stderr


def test_only_the_expected_certificates(host):
    files = set(host.file(DIR).listdir())
    want = EXPECTED[name(host)]
    assert files == {"ca.crt"} | {f"{c}.crt" for c in want} | {f"{c}.key" for c in want}


def test_keys_are_private_to_their_service_and_match(host):
    for cert in EXPECTED[name(host)]:
        key = host.file(f"{DIR}/{cert}.key")
        assert key.mode == 0o600
        assert key.user == OWNERS.get(cert, "sagews")
        assert key.group == OWNERS.get(cert, "sagews")
        pub_key = host.check_output(f"openssl pkey -in {DIR}/{cert}.key -pubout")
        pub_crt = host.check_output(f"openssl x509 -in {DIR}/{cert}.crt -noout -pubkey")
        assert pub_key == pub_crt, f"{cert}.key does not match {cert}.crt"


def test_server_certificates_name_the_host_its_address_and_the_public_names(host):
    servers = [c for c in EXPECTED[name(host)] if c in ("server", "postgresql", "worker", "etcd")]
    for cert in servers:
        out = text(host, cert)
        assert f"DNS:{name(host)}" in out
        assert f"IP Address:{ADDRESSES[name(host)]}" in out
        assert "DNS:sagews.example.test" in out and "IP Address:172.30.3.100" in out
        assert "TLS Web Server Authentication" in out


def test_client_certificates_are_client_only(host):
    for cert in [c for c in EXPECTED[name(host)] if c.endswith("-client")]:
        out = text(host, cert)
        assert "TLS Web Client Authentication" in out
        assert "TLS Web Server Authentication" not in out
        assert "Subject Alternative Name" not in out


def test_a_server_certificate_is_accepted_by_a_tls_client_checking_the_name(host):
    """openssl s_server with the host's certificate; s_client verifies chain and hostname."""
    cert = {"pki-b": "postgresql", "pki-c": "worker"}.get(name(host), "server")
    host.run(
        f"timeout 10 openssl s_server -accept 8443 -cert {DIR}/{cert}.crt -key {DIR}/{cert}.key "
        "-naccept 1 -quiet >/dev/null 2>&1 &"
    )
    out = host.run(
        f"sleep 1; echo | openssl s_client -connect 127.0.0.1:8443 -CAfile {DIR}/ca.crt "
        f"-verify_hostname {name(host)} -verify_return_error -brief 2>&1"
    )
    assert out.rc == 0 and "Verification: OK" in out.stdout, out.stdout


def test_rerun_and_adding_a_host_reissue_nothing_on_other_hosts(host):
    if name(host) != "pki-a":
        pytest.skip("pki-a is the host whose certificates must not change")
    now, before = serials(host)
    assert before, "side_effect.yml did not record the serials"
    assert now == before, "a certificate (or the CA) was reissued on a rerun"


def test_certificates_inside_the_renewal_window_are_reissued(host):
    if name(host) != "pki-b":
        pytest.skip("pki-b's certificates were put inside the renewal window")
    now, before = serials(host)
    assert before
    assert now["ca.crt"] == before["ca.crt"], "the CA must never be recreated"
    for cert in EXPECTED["pki-b"]:
        assert now[f"{cert}.crt"] != before[f"{cert}.crt"], f"{cert} was not renewed"


def test_an_added_host_gets_its_certificates(host):
    if name(host) != "pki-c":
        pytest.skip("pki-c is the host added by side_effect.yml")
    assert not host.file("/root/pki-before.txt").exists
    now, _ = serials(host)
    assert set(now) == {"ca.crt", "worker.crt", "logserver-client.crt"}
