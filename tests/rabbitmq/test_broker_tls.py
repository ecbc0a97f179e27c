"""A fleet of its own deployed first with the management plugin on loopback, then with TLS and peer verification.

The test generates its CA and certificates with openssl. TLS phase: the broker listens on 5671 only
(rabbitmq_tls_only), verifies client certificates (rabbitmq_tls_verify_peer), and serves the management
plugin over TLS; the worker connects with amqps:// and its client certificate, and so does Flower (group
flower: the worker host) with the same certificate (flower_tls_* default to the host's celery_worker_tls_*).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
from pathlib import Path

import amqp
import pytest
import yaml

from support.deploy import ROOT, deploy, inventory_hostvars, recap, write_inventory
from support.fleet import FLEETS
from support.flower import listed_workers

pytestmark = pytest.mark.fleet("tls")
SANDBOX_INVENTORY = FLEETS["tls"].inventory
BROKER, WORKER = "tls-broker", "tls-worker"
HOSTS = {BROKER, WORKER}
OPERATOR = ". /etc/conf.d/celery && $CELERY_BIN -A $CELERY_APP"
NOFILE = 16384  # below the sandbox containers' own hard limit (20000), so the broker gets exactly this


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(directory: Path, name: str, ca: str, extensions: str) -> None:
    """name.key and name.pem (EC P-256), signed by ca (ca.pem and ca.key in directory)."""
    (directory / f"{name}.ext").write_text(extensions)
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=directory)


def _make_ca(directory: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}", cwd=directory)


def _leaf_extensions(usage: str, san: str = "") -> str:
    lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature", f"extendedKeyUsage={usage}",
             "subjectKeyIdentifier=hash", "authorityKeyIdentifier=keyid"]
    return "\n".join(lines + ([f"subjectAltName={san}"] if san else [])) + "\n"


@pytest.fixture(scope="module")
def address(sandbox_fleet) -> str:
    """The broker's address, the one the workers connect to."""
    return inventory_hostvars(SANDBOX_INVENTORY)[BROKER]["ansible_host"]


@pytest.fixture(scope="module")
def certs(address, tmp_path_factory) -> Path:
    """The fleet CA, the broker's and the worker's certificates; and a client certificate of another CA."""
    directory = tmp_path_factory.mktemp("certs")
    _make_ca(directory, "ca")
    _issue(directory, "broker", "ca", _leaf_extensions("serverAuth", f"IP:{address},DNS:{BROKER}"))
    _issue(directory, "worker", "ca", _leaf_extensions("clientAuth"))
    _make_ca(directory, "rogue-ca")
    _issue(directory, "rogue", "rogue-ca", _leaf_extensions("clientAuth"))
    return directory


@pytest.fixture(scope="module")
def password(sandbox_fleet) -> str:
    return (ROOT / ".secrets" / SANDBOX_INVENTORY.parent.name / "rabbitmq-celery-password").read_text().strip()


def _inventory(broker_vars: dict, worker_vars: dict) -> dict:
    document = yaml.safe_load(SANDBOX_INVENTORY.read_text())
    document["all"]["children"]["rabbitmq"]["hosts"][BROKER] = broker_vars
    document["all"]["children"]["celery_workers"]["hosts"][WORKER] = worker_vars
    return document


def _deploy_twice(inventory: Path) -> dict[str, subprocess.CompletedProcess]:
    """A deploy, then a second one and a check-mode one that should change nothing."""
    runs = {"first": deploy(inventory)}
    assert runs["first"].returncode == 0, runs["first"].stdout[-4000:]
    runs["second"] = deploy(inventory)
    runs["check"] = deploy(inventory, check=True)
    return runs


@pytest.fixture(scope="module")
def plain_fleet(sandbox_fleet, tmp_path_factory):
    """Deployed without TLS, the management plugin on."""
    inventory = _inventory({"rabbitmq_management_enabled": True}, {})
    return _deploy_twice(write_inventory(tmp_path_factory.mktemp("plain"), inventory, SANDBOX_INVENTORY))


@pytest.fixture(scope="module")
def tls_fleet(plain_fleet, certs, sandbox_fleet, tmp_path_factory):
    """Then redeployed with TLS only and peer verification; the Erlang cookie made readable by all beforehand."""
    assert sandbox_fleet.host(BROKER).run("chmod 0644 /var/lib/rabbitmq/.erlang.cookie").rc == 0
    broker_vars = {
        "rabbitmq_tls_ca_cert": str(certs / "ca.pem"),                 # a controller-side path
        "rabbitmq_tls_cert": str(certs / "broker.pem"),
        "rabbitmq_tls_key": (certs / "broker.key").read_text(),        # PEM text
        "rabbitmq_tls_verify_peer": True,
        "rabbitmq_tls_only": True,
        "rabbitmq_management_enabled": True,
        "rabbitmq_nofile_limit": NOFILE,
        "rabbitmq_disk_free_limit": {"absolute": "1GB"},
    }
    worker_vars = {"celery_worker_tls_cert": (certs / "worker.pem").read_text(),
                   "celery_worker_tls_key": str(certs / "worker.key")}
    inventory = _inventory(broker_vars, worker_vars)
    return _deploy_twice(write_inventory(tmp_path_factory.mktemp("tls"), inventory, SANDBOX_INVENTORY))


def _changed(run: subprocess.CompletedProcess) -> dict[str, int]:
    assert run.returncode == 0, run.stdout[-4000:]
    return {host: s["changed"] for host, s in recap(run.stdout).items()}


def _listening(host) -> list[str]:
    """Local address:port of every listening TCP socket."""
    return [line.split()[3] for line in host.check_output("ss -Hltn").splitlines()]


def _connect(address: str, port: int, password: str, tls: dict | None) -> None:
    """Open and close an AMQP connection as the fleet user (raises when the broker refuses it)."""
    conn = amqp.Connection(host=f"{address}:{port}", userid="celery", password=password, virtual_host="celery",
                           ssl=tls or False, connect_timeout=5)
    try:
        conn.connect()
    finally:
        conn.collect()


def _tls(certs: Path, address: str, client: str | None) -> dict:
    options = {"ca_certs": str(certs / "ca.pem"), "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": address}
    if client:
        options.update(certfile=str(certs / f"{client}.pem"), keyfile=str(certs / f"{client}.key"))
    return options


# Without TLS: the management plugin listens on loopback only.

def test_plain_deploy_changes_nothing_the_second_time_nor_in_check_mode(plain_fleet):
    assert _changed(plain_fleet["second"]) == {h: 0 for h in HOSTS}, plain_fleet["second"].stdout[-3000:]
    assert _changed(plain_fleet["check"]) == {h: 0 for h in HOSTS}, plain_fleet["check"].stdout[-3000:]


def test_management_without_tls_listens_on_loopback_only(plain_fleet, sandbox_fleet, address):
    broker = sandbox_fleet.host(BROKER)
    assert [a for a in _listening(broker) if a.endswith(":15672") or a.endswith(":15671")] == ["127.0.0.1:15672"]
    answer = broker.run("python3 -c \"import urllib.request as u; u.urlopen('http://127.0.0.1:15672/api/overview')\"")
    assert "HTTP Error 401" in answer.stderr  # the API answers, and wants credentials
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, 15672), timeout=5)


# With TLS only and peer verification.

def test_tls_deploy_changes_nothing_the_second_time_nor_in_check_mode(tls_fleet):
    assert _changed(tls_fleet["second"]) == {h: 0 for h in HOSTS}, tls_fleet["second"].stdout[-3000:]
    assert _changed(tls_fleet["check"]) == {h: 0 for h in HOSTS}, tls_fleet["check"].stdout[-3000:]


def test_tls_deploy_never_prints_the_keys(tls_fleet, certs):
    body = (certs / "worker.key").read_text().splitlines()[1]
    broker_body = (certs / "broker.key").read_text().splitlines()[1]
    for run in tls_fleet.values():
        assert body not in run.stdout and broker_body not in run.stdout


def test_worker_uses_amqps_with_the_ca_and_its_client_certificate(tls_fleet, sandbox_fleet, certs):
    worker = sandbox_fleet.host(WORKER)
    for installed, given in [("ca.pem", "ca.pem"), ("client.pem", "worker.pem"), ("client.key", "worker.key")]:
        assert worker.file(f"/opt/celery/tls/{installed}").content_string == (certs / given).read_text()
    env = dict(line.split("=", 1) for line in worker.check_output("cat /etc/conf.d/celery").splitlines()
               if "=" in line and not line.startswith("#"))
    url = env["CELERY_BROKER_URL"].strip('"')
    assert url.startswith("amqps://celery:") and url.endswith(":5671/celery")
    assert env["CELERY_BROKER_CA_FILE"] == '"/opt/celery/tls/ca.pem"'
    assert env["CELERY_BROKER_CERT_FILE"] == '"/opt/celery/tls/client.pem"'
    assert env["CELERY_BROKER_KEY_FILE"] == '"/opt/celery/tls/client.key"'
    key = worker.file("/opt/celery/tls/client.key")
    assert (key.user, key.group, key.mode) == ("root", "celery", 0o640)


def test_flower_uses_amqps_with_the_ca_and_the_hosts_client_certificate(tls_fleet, sandbox_fleet, certs):
    worker = sandbox_fleet.host(WORKER)
    for installed, given in [("ca.pem", "ca.pem"), ("client.pem", "worker.pem"), ("client.key", "worker.key")]:
        assert worker.file(f"/opt/flower/tls/{installed}").content_string == (certs / given).read_text()
    key = worker.file("/opt/flower/tls/client.key")
    assert (key.user, key.group, key.mode) == ("root", "flower", 0o640)
    env = worker.check_output("cat /etc/conf.d/flower")
    url = next(line for line in env.splitlines() if line.startswith("CELERY_BROKER_URL=")).split("=", 1)[1].strip('"')
    assert url.startswith("amqps://celery:") and url.endswith(":5671/celery")
    settings = worker.file("/etc/flower/celeryconfig.py").content_string
    for path in ["/opt/flower/tls/ca.pem", "/opt/flower/tls/client.pem", "/opt/flower/tls/client.key"]:
        assert f'"{path}"' in settings


def test_flower_sees_the_worker_over_tls(tls_fleet):
    password = (ROOT / ".secrets" / SANDBOX_INVENTORY.parent.name / "flower-password").read_text().strip()
    flower_url = f"http://{inventory_hostvars(SANDBOX_INVENTORY)[WORKER]['ansible_host']}:5555"
    status, missing, body = listed_workers(flower_url, ("admin", password), [f"celery@{WORKER}"])
    assert status == 200
    assert missing == [], body[:2000]


def test_broker_key_is_readable_by_root_and_rabbitmq_only(tls_fleet, sandbox_fleet, certs):
    broker = sandbox_fleet.host(BROKER)
    key = broker.file("/var/lib/rabbitmq/tls/server.key")
    assert (key.user, key.group, key.mode) == ("root", "rabbitmq", 0o640)
    for installed, given in [("ca.pem", "ca.pem"), ("server.pem", "broker.pem"), ("server.key", "broker.key")]:
        assert broker.file(f"/var/lib/rabbitmq/tls/{installed}").content_string == (certs / given).read_text()


def test_every_worker_connection_is_tls_on_5671(tls_fleet, sandbox_fleet):
    broker = sandbox_fleet.host(BROKER)
    rows = json.loads(broker.check_output("rabbitmqctl -q list_connections user ssl port --formatter json"))
    fleet_rows = [r for r in rows if r["user"] == "celery"]
    assert fleet_rows, rows
    assert {(r["ssl"], r["port"]) for r in fleet_rows} == {(True, 5671)}


@pytest.mark.parametrize("user", ["root", "celery"])
def test_operator_ping_works_over_tls(tls_fleet, sandbox_fleet, user):
    command = f"cd /tmp && {OPERATOR} inspect ping -d celery@{WORKER}"
    if user == "celery":
        command = f"su -s /bin/sh celery -c '{command}'"
    result = sandbox_fleet.host(WORKER).run(command)
    assert result.rc == 0, result.stdout + result.stderr
    assert f"celery@{WORKER}: OK" in result.stdout


def test_plain_amqp_port_is_closed(tls_fleet, address):
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, 5672), timeout=5)


def test_client_with_a_fleet_certificate_is_accepted(tls_fleet, certs, address, password):
    _connect(address, 5671, password, _tls(certs, address, "worker"))


@pytest.mark.parametrize("client", [None, "rogue"], ids=["no certificate", "certificate of another CA"])
def test_client_without_a_fleet_certificate_is_refused(tls_fleet, certs, address, password, client):
    with pytest.raises((OSError, amqp.exceptions.AMQPError)):
        _connect(address, 5671, password, _tls(certs, address, client))


def test_management_with_tls_serves_https_on_every_interface_and_no_plain_http(tls_fleet, sandbox_fleet, certs,
                                                                                address):
    ports = [a for a in _listening(sandbox_fleet.host(BROKER)) if a.endswith(":15672") or a.endswith(":15671")]
    assert ports and all(p.rsplit(":", 1)[1] == "15671" and not p.startswith("127.") for p in ports), ports
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    https = http.client.HTTPSConnection(address, 15671, context=context, timeout=10)
    try:
        https.request("GET", "/api/overview")
        assert https.getresponse().status == 401
    finally:
        https.close()


def test_deploy_restores_the_erlang_cookie_mode(tls_fleet, sandbox_fleet):
    cookie = sandbox_fleet.host(BROKER).file("/var/lib/rabbitmq/.erlang.cookie")
    assert (cookie.user, cookie.group, cookie.mode) == ("rabbitmq", "rabbitmq", 0o400)


def test_broker_runs_with_the_inventorys_limits(tls_fleet, sandbox_fleet):
    broker = sandbox_fleet.host(BROKER)
    pid = broker.check_output("systemctl show -p MainPID --value rabbitmq-server")
    assert int(broker.check_output(f"awk '/Max open files/ {{print $4}}' /proc/{pid}/limits")) == NOFILE
    status = json.loads(broker.check_output("rabbitmq-diagnostics -q status --formatter json"))
    assert status["disk_free_limit"] == 1_000_000_000
