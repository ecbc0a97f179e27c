"""A production-like fleet: an unprivileged login with sudo, checked host keys, a vaulted password of
special characters, a templated ansible_host; the whole lifecycle through make and fleetctl, and the
roles from an operator's own playbook.

The fleet's hosts let in only user deploy (sandbox_login: deploy; root cannot log in), every host key
is checked against the sandbox's known_hosts, the broker password lives only in ansible-vault (with a
vault password file, as a CI job of a real fleet has it) and holds every character that breaks URLs
and shells, and each host's ansible_host is a template.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fleetctl import sandbox
from support.deploy import recap
from support.fleet import BIN, FLEETS, RELAXED, ROOT, fleet_env, run
from support.production import INVENTORY, PASSWORD, VAULT_PASS
from support.release import sample_app

pytestmark = pytest.mark.fleet("production")
SPEC = FLEETS["production"]
KNOWN_HOSTS = ROOT / ".sandbox" / "known_hosts"
HOSTS = ("prod-broker", "prod-w1", "prod-w2")
NODES = ("jobs@prod-w1", "jobs@prod-w2")
GUARD = 1800


def _run(*args: str, timeout: float = GUARD) -> subprocess.CompletedProcess:
    return run(list(args), env=fleet_env(dict(SPEC.env)), timeout=timeout)


def _forget_ssh_masters() -> None:
    """Close Ansible's persistent SSH connections: a new connection checks the host key again."""
    for socket in (Path.home() / ".ansible" / "cp").glob("*"):
        socket.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def production(sandbox_fleet):
    """The production-like fleet, booted by the fleet pool (its inventory written by support.production)."""
    return sandbox_fleet


@pytest.fixture(scope="module")
def fleet(production):
    """Its first deploy: the run's output."""
    return production.deploy()


def _ansible(host: str, command: str, *extra: str) -> subprocess.CompletedProcess:
    return _run(str(BIN / "ansible"), host, "-i", str(INVENTORY), "-m", "ansible.builtin.command", "-a", command,
                *extra, timeout=120)


def test_deploy_as_an_unprivileged_user_with_sudo_succeeds(fleet):
    assert fleet.returncode == 0, fleet.stdout[-4000:] + fleet.stderr[-2000:]
    assert set(recap(fleet.stdout)) == set(HOSTS)
    whoami = _ansible("prod-w1", "whoami", "-e", "ansible_become=false")
    assert whoami.returncode == 0 and "deploy" in whoami.stdout.split(), whoami.stdout + whoami.stderr
    root = _run("ssh", "-i", str(ROOT / ".sandbox" / "ssh" / "id_ed25519"), "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={KNOWN_HOSTS}", "-o", "StrictHostKeyChecking=yes",
                f"root@{_address('prod-w1')}", "true", timeout=60)
    assert root.returncode != 0 and "Permission denied" in root.stderr


def _address(host: str) -> str:
    rows = json.loads(_run(str(BIN / "fleetctl"), "sandbox", "status", "--json").stdout)
    return next(row["address"] for row in rows if row["host"] == host and row["inventory"].endswith(
        str(INVENTORY.relative_to(ROOT))))


def test_second_deploy_changes_nothing(fleet, production):
    again = production.deploy()
    assert again.returncode == 0, again.stdout[-4000:]
    assert {host: counts["changed"] for host, counts in recap(again.stdout).items()} == dict.fromkeys(HOSTS, 0)


def test_every_node_connects_with_a_vaulted_password_of_special_characters(fleet, production):
    done = production.fleetctl("health", "--format", "json", *RELAXED)
    report = json.loads(done.stdout)
    rows = {row["name"]: row for row in report["rows"]}
    assert done.returncode == 0, done.stdout + done.stderr
    for node in NODES:
        assert rows[node]["status"] == "OK", rows[node]
    for text in (fleet.stdout, fleet.stderr, done.stdout, done.stderr):
        assert PASSWORD not in text


def test_the_password_stays_out_of_the_environment_file_as_written(fleet):
    text = _ansible("prod-w1", "cat /etc/conf.d/celery", "-e", "ansible_become=true").stdout
    url = re.search(r'^CELERY_BROKER_URL="(.*)"$', text, re.MULTILINE).group(1)
    assert PASSWORD not in text and re.fullmatch(r"amqp://celery:[A-Za-z0-9%._~-]+@[0-9.]+:5672/celery", url)


def test_broadcast_answers_from_every_node(fleet, production):
    done = production.fleetctl("broadcast", "--task", "host_report", "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["ok"] and outcome["answered"] == len(NODES)


def test_rolling_restart_goes_through_sudo(fleet, production):
    done = production.fleetctl("restart", "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["ok"] and [host["host"] for host in outcome["hosts"]] == ["prod-w1", "prod-w2"]


def test_the_roles_work_from_an_operators_own_playbook(fleet, tmp_path):
    playbook = tmp_path / "workers.yml"
    playbook.write_text((ROOT / "playbooks" / "examples" / "workers.yml").read_text())
    done = _run(str(BIN / "ansible-playbook"), "-i", str(INVENTORY), str(playbook))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert {host: counts["changed"] for host, counts in recap(done.stdout).items()} == {"prod-w1": 0, "prod-w2": 0}


def test_a_changed_host_key_is_refused_by_deploy_and_every_tool_naming_the_host(fleet, production):
    address = _address("prod-w1")
    other = INVENTORY.parent.parent / "spoofed_key"
    other.unlink(missing_ok=True)
    other.with_suffix(".pub").unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    key = " ".join(other.with_suffix(".pub").read_text().split()[:2])
    # The sandbox's known_hosts is shared with the other lane's fleets: none boots while a spoofed key stands.
    with sandbox._locked():
        original = KNOWN_HOSTS.read_text()
        lines = [f"{address} {key}" if line.split(maxsplit=1)[0] == address else line for line in original.splitlines()]
        try:
            KNOWN_HOSTS.write_text("\n".join(lines) + "\n")
            _forget_ssh_masters()
            deployed = production.deploy()
            assert deployed.returncode != 0
            assert re.search(r"prod-w1.*(UNREACHABLE|Host key verification failed)", deployed.stdout, re.DOTALL)
            assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in deployed.stdout + deployed.stderr or \
                "Host key verification failed" in deployed.stdout + deployed.stderr

            health = production.fleetctl("health", "--format", "json", *RELAXED)
            rows = {row["name"]: row for row in json.loads(health.stdout)["rows"]}
            assert health.returncode == 1 and rows["prod-w1"]["status"] == "DOWN"
            assert "does not match its known_hosts entry" in rows["prod-w1"]["reasons"][0]
            assert rows["prod-w2"]["status"] != "DOWN"  # still reached (its load or heartbeat may be judged)

            restarted = production.fleetctl("restart", "--limit", "prod-w1", "--format", "json")
            outcome = json.loads(restarted.stdout)
            assert restarted.returncode == 1 and outcome["stopped_at"] == ["prod-w1"]
            assert "does not match its known_hosts entry" in outcome["hosts"][0]["reasons"][0]
        finally:
            KNOWN_HOSTS.write_text(original)
            _forget_ssh_masters()
            other.unlink(missing_ok=True)
            other.with_suffix(".pub").unlink(missing_ok=True)
    assert production.fleetctl("health", *RELAXED).returncode == 0  # the refused restart gave the host its queues back


OPERATOR = "fleetop"  # a controller user of its own: no root, no sudo


def _as_operator(home: Path, *args: str, timeout: float = GUARD) -> subprocess.CompletedProcess:
    """args run as the operator user, in its copy of the toolkit, with a login-like environment."""
    env = [f"HOME={home}", "PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "ANSIBLE_NOCOLOR=1",
           f"ANSIBLE_VAULT_PASSWORD_FILE={home / 'vault-pass'}"]
    return subprocess.run(["runuser", "-u", OPERATOR, "--", "env", "-i", *env, *args], cwd=home / "toolkit",
                          capture_output=True, text=True, timeout=timeout)


def _operator_copy(home: Path) -> Path:
    """The toolkit as the repository has it (working tree, ignored files left out), owned by the operator."""
    tree = home / "toolkit"
    shutil.rmtree(tree, ignore_errors=True)
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in (n for n in listed if n and (ROOT / n).is_file()):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tree / name)
    return tree


def _operator_inventory(home: Path, tree: Path) -> Path:
    """A plain inventory of the production-like hosts, as an operator writes one: no sandbox variables."""
    hostvars = json.loads(_run(str(BIN / "ansible-inventory"), "-i", str(INVENTORY), "--list").stdout)["_meta"][
        "hostvars"]
    for name, source in (("id_ed25519", ROOT / ".sandbox" / "ssh" / "id_ed25519"), ("known_hosts", KNOWN_HOSTS),
                         ("vault-pass", VAULT_PASS)):
        shutil.copy(source, home / name)
        (home / name).chmod(0o600)
    directory = tree / "inventories" / "production"
    (directory / "group_vars" / "all").mkdir(parents=True)
    shutil.copy(INVENTORY.parent / "group_vars" / "all" / "vault.yml", directory / "group_vars" / "all")
    document = yaml.safe_load(INVENTORY.read_text())
    document["all"]["vars"] = {
        "ansible_user": "deploy", "ansible_become": True,
        "ansible_ssh_private_key_file": str(home / "id_ed25519"),
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={home / 'known_hosts'}",
        **{k: hostvars[HOSTS[0]][k] for k in ("fleet_http_proxy", "fleet_ca_bundle")}}
    for group in document["all"]["children"].values():
        for name, variables in (group.get("hosts") or {}).items():
            if "ansible_host" in (variables or {}):
                variables["ansible_host"] = hostvars[name]["sandbox_address"]
    (directory / "hosts.yml").write_text(yaml.safe_dump(document, sort_keys=False))
    return directory / "hosts.yml"


def test_make_deploy_and_health_of_an_operators_inventory_run_as_an_unprivileged_user(fleet):
    """A controller user without root deploys a real inventory (make setup, make deploy, make health)."""
    if subprocess.run(["id", OPERATOR], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", OPERATOR], check=True)
    home = Path(f"/home/{OPERATOR}")
    tree = _operator_copy(home)
    inventory = _operator_inventory(home, tree).relative_to(tree)
    subprocess.run(["chown", "-R", f"{OPERATOR}:", str(home)], check=True)

    setup = _as_operator(home, "make", "setup", "PYTHON=/usr/bin/python3")
    assert setup.returncode == 0, setup.stdout[-2000:] + setup.stderr[-2000:]
    deployed = _as_operator(home, "make", "--no-print-directory", "deploy", f"INVENTORY={inventory}")
    assert deployed.returncode == 0, deployed.stdout[-4000:] + deployed.stderr[-2000:]
    assert {host: counts["changed"] for host, counts in recap(deployed.stdout).items()} == dict.fromkeys(HOSTS, 0)
    health = _as_operator(home, "make", "--no-print-directory", "health", f"INVENTORY={inventory}", timeout=600)
    # Every node answers through the vaulted password; a busy test machine's load may still FAIL a host.
    assert health.returncode in (0, 2) and "HEALTHY: 3 hosts, 2 nodes" in health.stdout, health.stdout + health.stderr
    assert all(re.search(rf"^  {node} +OK +pong", health.stdout, re.MULTILINE) for node in NODES), health.stdout
    assert not (tree / ".sandbox").exists()  # nothing of the sandbox was needed
    for text in (deployed.stdout, deployed.stderr, health.stdout):
        assert PASSWORD not in text


# Last in the module: from here on the fleet runs an app of the operator's own.
def test_a_release_of_the_operators_app_rolls_out_through_sudo(fleet, tmp_path, production):
    """fleetctl release (build, install, switch, drained restart, gate) as user deploy, then nothing to do."""
    document = yaml.safe_load(INVENTORY.read_text())
    workers = document["all"]["children"]["celery_workers"]
    workers["vars"] = {"celery_worker_app_source": str(sample_app(tmp_path, "prod-1")),
                       "celery_worker_app": "shipyard.celery:app"}
    INVENTORY.write_text(yaml.safe_dump(document, sort_keys=False))

    done = production.fleetctl("release", "--version", "prod-1", "--format", "json")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    outcome = json.loads(done.stdout)
    assert [(h["host"], h["after"]) for h in outcome["hosts"]] == [("prod-w1", "prod-1"), ("prod-w2", "prod-1")]
    assert outcome["changed"] == ["prod-w1", "prod-w2"]
    current = _ansible("prod-w1", "readlink -f /opt/celery/current", "-e", "ansible_become=true").stdout.split()
    assert current[-1] == "/opt/celery/releases/prod-1"

    again = production.fleetctl("release", "--version", "prod-1", "--format", "json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] == [], again.stdout + again.stderr
    health = production.fleetctl("health", "--format", "json", *RELAXED)
    rows = {row["name"]: row for row in json.loads(health.stdout)["rows"]}
    assert all(rows[node]["status"] == "OK" for node in NODES), health.stdout
    for text in (done.stdout, done.stderr, again.stdout, health.stdout):
        assert PASSWORD not in text
