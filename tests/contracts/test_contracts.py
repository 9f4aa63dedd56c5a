"""The contracts between the code and the Ansible roles, each checked across the boundary.

Every value below is defined once: the code owns it (a default, a route prefix, an env variable) and
playbooks/vars/sagews.yml or a role renders what the code reads. These tests render the roles' real
templates with Ansible's own templating and feed the result to the code's real config loaders, so a
port, path, prefix or variable name that drifts on either side fails here, before any deployment.
The Molecule scenarios then check the same contracts on running services.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from sagews.backend import config as backend_config
from sagews.backend.app import SOCKJS_PREFIX
from sagews.backend.handlers.ops import PageHandler
from sagews.db.config import URL_ENV
from sagews.logserver import config as logserver_config
from sagews.worker import config as worker_config

ROOT = Path(__file__).resolve().parents[2]


def yaml_file(rel: str) -> Any:
    return yaml.safe_load((ROOT / rel).read_text())


def render(template: str, variables: dict[str, Any]) -> str:
    """A role template rendered by Ansible's templating, as the template module would."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template

    templar = Templar(loader=DataLoader(), variables={"ansible_managed": "Ansible managed", **variables})
    return str(templar.template(trust_as_template((ROOT / template).read_text())))


def role_vars(role: str, **overrides: Any) -> dict[str, Any]:
    values = dict(yaml_file(f"roles/{role}/defaults/main.yml"))
    vars_file = ROOT / f"roles/{role}/vars/main.yml"
    if vars_file.exists():
        values.update(yaml.safe_load(vars_file.read_text()) or {})
    values.update(overrides)
    return values


APPLIANCE = yaml_file("playbooks/vars/sagews.yml")


def test_the_load_balancers_stick_sockjs_sessions_where_the_backend_and_the_client_serve_them():
    assert APPLIANCE["sagews_sockjs_prefix"] == SOCKJS_PREFIX
    assert yaml_file("roles/haproxy/defaults/main.yml")["haproxy_sockjs_prefixes"] == [SOCKJS_PREFIX]
    client = (ROOT / "static/js/protocol.js").read_text()
    assert re.search(r'this\.url = url \|\| "' + re.escape(SOCKJS_PREFIX) + '"', client)
    cfg = render(
        "roles/haproxy/templates/haproxy.cfg.j2",
        role_vars(
            "haproxy",
            haproxy_sockjs_prefixes=[APPLIANCE["sagews_sockjs_prefix"]],
            haproxy_backend_servers=[{"name": "b1", "address": "10.0.1.1"}],
            __haproxy_stats_pw="x",
            inventory_hostname="lb1",
        ),
    )
    # stick on the session id: /sockjs/<server>/<session>/<transport> -> field 4 of the path
    stick = re.search(r"acl (sockjs_\d+) path_reg (\S+)\n\s+stick on path,field\((\d+),/\) if \1", cfg)
    assert stick, cfg
    path = f"{SOCKJS_PREFIX}/123/sessionid/xhr_streaming"
    assert re.match(stick.group(2), path)
    assert path.split("/")[int(stick.group(3)) - 1] == "sessionid"


def test_the_load_balancers_talk_tls_to_the_port_the_backend_listens_on():
    port = backend_config.BackendConfig().port
    assert APPLIANCE["sagews_backend_port"] == port
    assert yaml_file("roles/haproxy/defaults/main.yml")["haproxy_backend_port"] == port
    assert yaml_file("roles/sagews_backend/defaults/main.yml")["sagews_backend_port"] == port
    cfg = render(
        "roles/haproxy/templates/haproxy.cfg.j2",
        role_vars(
            "haproxy",
            haproxy_backend_servers=[{"name": "b1", "address": "10.0.1.1"}],
            haproxy_backend_verifyhost=APPLIANCE["sagews_backend_tls_name"],
            __haproxy_stats_pw="x",
            inventory_hostname="lb1",
        ),
    )
    line = next(ln for ln in cfg.splitlines() if ln.strip().startswith("server b1 "))
    assert f"10.0.1.1:{port} " in line
    assert " ssl verify required ca-file /etc/ssl/sagews/ca.crt" in line
    assert f"verifyhost {APPLIANCE['sagews_backend_tls_name']}" in line
    # and the backends' certificates carry that name (playbooks/pki.yml)
    pki = (ROOT / "playbooks/pki.yml").read_text()
    assert 'name: server, type: server, extra_sans: ["{{ sagews_backend_tls_name }}"]' in pki


def test_a_backend_drains_itself_through_the_socket_and_under_the_name_haproxy_gives_it():
    """sagews_backend's restart handler drains backends/<name> over HAProxy's runtime API."""
    odd = "be@1.example"  # an inventory name with a character HAProxy does not allow in server names
    cfg = render(
        "roles/haproxy/templates/haproxy.cfg.j2",
        role_vars(
            "haproxy",
            haproxy_backend_servers=[{"name": odd, "address": "10.0.1.1"}],
            __haproxy_stats_pw="x",
            inventory_hostname="lb1",
        ),
    )
    socket = re.search(r"^\s*stats socket (\S+) .*level admin", cfg, re.M)
    server = re.search(r"^backend backends\n(?:.*\n)*?\s+server (\S+) 10\.0\.1\.1:", cfg, re.M)
    assert socket and server, cfg
    backend = role_vars("sagews_backend", sagews_backend_haproxy_server=odd)
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template

    name = Templar(loader=DataLoader(), variables=backend).template(
        trust_as_template(backend["__sagews_backend_haproxy_name"])
    )
    assert name == server.group(1)
    assert backend["sagews_backend_haproxy_socket"] == socket.group(1)


def pki_installed(name: str) -> str:
    install_dir = yaml_file("roles/pki/defaults/main.yml")["pki_install_dir"]
    return f"{install_dir}/{name}"


def pki_names_for(group: str) -> set[str]:
    plays = yaml_file("playbooks/pki.yml")
    certs = plays[0]["vars"]["sagews_pki_certs_by_group"][group]
    return {c["name"] for c in certs}


def test_the_services_default_to_the_certificates_the_pki_role_installs():
    w = worker_config.WorkerConfig()
    assert (w.cert, w.key, w.ca) == tuple(pki_installed(n) for n in ("worker.crt", "worker.key", "ca.crt"))
    s = logserver_config.ServerConfig()
    assert (s.cert, s.key, s.ca) == tuple(pki_installed(n) for n in ("server.crt", "server.key", "ca.crt"))
    assert logserver_config.ClientConfig().ca == pki_installed("ca.crt")
    # each client certificate a role points at is issued to the group that runs the role
    for role, var, group in [
        ("sagews_backend", "sagews_backend_worker_cert", "backends"),
        ("sagews_backend", "sagews_backend_log_cert", "backends"),
        ("sagews_worker", "sagews_worker_log_cert", "workers"),
        ("sagews_logserver", "sagews_logserver_client_cert", "logservers"),
        ("sagews_worker", "sagews_worker_tls_cert", "workers"),
        ("sagews_backend", "sagews_backend_tls_cert", "backends"),
    ]:
        path = role_vars(role)[var]
        assert path.startswith(pki_installed("")), (role, var)
        assert Path(path).stem in pki_names_for(group), (role, var, group)


def test_the_database_settings_the_roles_write_are_what_the_services_read(monkeypatch):
    url = "postgresql://sagews:pw@/sagews?host=10.0.3.11:5432&host=10.0.3.12:5432&target_session_attrs=read-write"
    for role in ("sagews_backend", "sagews_logserver"):
        text = render(f"roles/{role}/templates/database.env.j2", role_vars(role, **{f"{role}_db_url": url}))
        env = dict(
            line.split("=", 1) for line in text.splitlines() if line.strip() and not line.startswith("#")
        )
        assert set(env) == {URL_ENV}, env
        value = env[URL_ENV].strip('"')  # systemd's EnvironmentFile= and sh both strip the quotes
        assert value == url
        monkeypatch.setenv(URL_ENV, value)
        if role == "sagews_backend":
            assert backend_config.load(None).db.url == url
        else:
            from sagews.logserver.server import apply_db_url

            cfg = logserver_config.ServerConfig()
            apply_db_url(cfg)
            assert cfg.db["url"] == url


def _loads(text: str) -> dict[str, Any]:
    return tomllib.loads(text)


@pytest.mark.parametrize("role", ["sagews_worker", "sagews_backend", "sagews_logserver"])
def test_each_role_renders_a_config_its_service_accepts(role, tmp_path):
    common = {
        "ansible_default_ipv4": {"address": "10.0.2.11"},
        "inventory_hostname": "h1",
        "sagews_runtime_build": "0.1.0-abc",
    }
    if role == "sagews_worker":
        text = render(
            "roles/sagews_worker/templates/worker.toml.j2",
            role_vars(
                role,
                sagews_worker_log_servers=["10.0.6.11:6200"],
                sagews_worker_limits={"processes": 32},
                **common,
            ),
        )
        path = tmp_path / "worker.toml"
        path.write_text(text)
        cfg = worker_config.load(path)
        assert cfg.port == APPLIANCE["sagews_worker_port"] and cfg.limits.processes == 32
        assert cfg.logging["servers"] == ["10.0.6.11:6200"]
    elif role == "sagews_backend":
        text = render(
            "roles/sagews_backend/templates/backend.toml.j2",
            role_vars(
                role,
                sagews_backend_cookie_secret="s" * 32,
                sagews_backend_cache_secret="c" * 32,
                sagews_backend_workers=[{"address": "10.0.2.11", "port": 6100}],
                sagews_backend_memcached_servers=["10.0.4.11:11211"],
                sagews_backend_log_servers=["10.0.6.11:6200"],
                **common,
            ),
        )
        cfg = backend_config.from_dict(_loads(text))
        assert cfg.port == APPLIANCE["sagews_backend_port"] and cfg.xheaders and cfg.secure_cookies
        assert cfg.cache_secret == "c" * 32
        assert [(w.address, w.port) for w in cfg.workers] == [("10.0.2.11", APPLIANCE["sagews_worker_port"])]
        assert cfg.logging["servers"] == ["10.0.6.11:6200"] and cfg.db.pool_size == 10
    else:
        text = render(
            "roles/sagews_logserver/templates/logserver.toml.j2",
            role_vars(role, sagews_logserver_own_servers=["10.0.6.11:6200"], **common),
        )
        path = tmp_path / "logserver.toml"
        path.write_text(text)
        cfg = logserver_config.load_server(path)
        own = logserver_config.load_own_logging(path)
        assert cfg.port == APPLIANCE["sagews_logserver_port"] and own is not None and own.servers


def test_nginx_serves_the_app_shell_under_the_clients_policy():
    normalized = " ".join(APPLIANCE["sagews_app_csp"].split())
    assert normalized == " ".join(PageHandler.CSP.split())
    assert (
        " ".join(yaml_file("roles/nginx_static/defaults/main.yml")["nginx_static_app_csp"].split())
        == normalized
    )


def test_units_restart_when_their_environment_file_changes():
    """EnvironmentFile= is read at start only: what the env file notifies must restart, never reload."""
    for role in ("sagews_backend", "sagews_logserver"):
        tasks = yaml_file(f"roles/{role}/tasks/main.yml")
        env_task = next(
            t for t in tasks if t.get("ansible.builtin.template", {}).get("src") == "database.env.j2"
        )
        handlers = yaml_file(f"roles/{role}/handlers/main.yml")
        fired = [h for h in handlers if env_task["notify"] in (h.get("name"), h.get("listen"))]
        states = {
            h["ansible.builtin.systemd_service"]["state"]
            for h in fired
            if "ansible.builtin.systemd_service" in h
        }
        assert states == {"restarted"}, (role, states)


def _names(lock: str) -> set[str]:
    lines = (ROOT / "requirements" / lock).read_text().splitlines()
    return {
        re.split(r"[=<>\[ ]", ln, maxsplit=1)[0].lower().replace("_", "-")
        for ln in lines
        if ln and ln[0] != "#"
    }


def test_the_runtime_locks_pin_every_dependency_the_package_declares():
    """The hosts install from requirements/runtime*.txt only (pip --no-index): a dependency added to
    pyproject.toml without `make lock` would be missing on every server."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        re.split(r"[=<>\[ ;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in project["dependencies"]
    }
    sage = {
        re.split(r"[=<>\[ ;]", d, maxsplit=1)[0].lower().replace("_", "-")
        for d in project["optional-dependencies"]["sage"]
    }
    assert declared <= _names("runtime.txt"), declared - _names("runtime.txt")
    assert declared | sage <= _names("runtime-sage.txt"), (declared | sage) - _names("runtime-sage.txt")


def test_the_egress_rules_match_the_workspace_uids_the_worker_hands_out(tmp_path):
    """The worker role's nftables drop-in rejects exactly the uid range the worker's config gives its
    pool (uid_base, user_pool_size, from the same variables), on the appliance's service ports, and
    nft accepts it; the code's rule set (sagews dev) says the same."""
    import shutil
    import subprocess

    from sagews.worker import egress

    variables = role_vars(
        "sagews_worker",
        ansible_default_ipv4={"address": "10.0.2.11"},
        inventory_hostname="h1",
        sagews_worker_uid_base=3_100_000,
        sagews_worker_user_pool_size=32,
        sagews_worker_egress_hosts=["10.0.2.11", "10.0.4.11", "fd00::5"],
    )
    path = tmp_path / "worker.toml"
    path.write_text(render("roles/sagews_worker/templates/worker.toml.j2", variables))
    cfg = worker_config.load(path)
    first, last = cfg.uid_base, cfg.uid_base + cfg.user_pool_size - 1
    rules = render("roles/sagews_worker/templates/sagews-worker.nft.j2", variables)
    ports = ", ".join(map(str, sorted(egress.SERVICE_PORTS)))
    assert f"meta skuid {first}-{last} tcp dport {{ {ports} }} counter reject with tcp reset" in rules
    assert f"meta skuid {first}-{last} ip daddr {{ 10.0.2.11, 10.0.4.11 }} counter reject" in rules
    assert f"meta skuid {first}-{last} ip6 daddr {{ fd00::5 }} counter reject" in rules
    code = egress.ruleset("sagews", first, last, egress.SERVICE_PORTS, ["10.0.2.11", "10.0.4.11"])
    assert f"meta skuid {first}-{last} tcp dport {{ {ports} }}" in code
    # the role's default ports are the appliance's (playbooks/vars/sagews.yml) plus PostgreSQL's
    appliance = {APPLIANCE[k] for k in APPLIANCE if k.endswith("_port")} | {5432}
    assert set(variables["sagews_worker_egress_ports"]) == appliance == set(egress.SERVICE_PORTS)
    # and those are the ports the other roles really use
    for role, var, key in [
        ("etcd", "etcd_client_port", "sagews_etcd_client_port"),
        ("etcd", "etcd_peer_port", "sagews_etcd_peer_port"),
        ("postgresql", "postgresql_patroni_restapi_port", "sagews_patroni_port"),
        ("pgbackrest", "pgbackrest_port", "sagews_pgbackrest_port"),
        ("haproxy", "haproxy_stats_port", "sagews_haproxy_stats_port"),
        ("haproxy", "haproxy_peers_port", "sagews_haproxy_peers_port"),
        ("memcached", "memcached_port", "sagews_memcached_port"),
        ("nginx_static", "nginx_static_port", "sagews_static_port"),
    ]:
        assert yaml_file(f"roles/{role}/defaults/main.yml")[var] == APPLIANCE[key], (role, var)
    if shutil.which("nft"):
        f = tmp_path / "egress.nft"
        f.write_text(rules.replace("Ansible managed", "# Ansible managed"))
        check = subprocess.run(["nft", "-c", "-f", str(f)], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stderr
