"""How fleetctl reaches hosts: the inventory rendered by ansible-core, SSH options read as ssh would, sudo."""
from __future__ import annotations

import subprocess
from pathlib import Path

import paramiko
import pytest

from fleetctl import inventory as fleet
from fleetctl.remote import ssh

ROOT = Path(__file__).resolve().parents[2]
HOSTS = """\
all:
  vars:
    base: "10.9.9"
  children:
    rabbitmq:
      hosts:
        mq:
          ansible_host: "{{ base }}.4"
    celery_workers:
      hosts:
        w1:
          ansible_host: "{{ base }}.5"
          ansible_user: deploy
          ansible_become: true
          ansible_ssh_common_args: >-
            -o ProxyJump=ops@bastion.example:2222 -o UserKnownHostsFile=/etc/fleet/known_hosts
            -o StrictHostKeyChecking=yes
        w2:
          ansible_host: "fd00::5"
"""


def _inventory(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "prod" / "hosts.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HOSTS + extra)
    return path


def test_templated_ansible_host_and_connection_settings_are_rendered_by_ansible(tmp_path):
    loaded = fleet.load_fleet(_inventory(tmp_path), environ={}, secrets_root=tmp_path)
    w1, w2 = loaded.host("w1"), loaded.host("w2")
    assert (w1.address, w1.user, w1.become, w1.become_user) == ("10.9.9.5", "deploy", True, "root")
    assert "ProxyJump=ops@bastion.example:2222" in w1.ssh_args
    assert loaded.broker_address == "10.9.9.4" and w2.address == "fd00::5" and not w2.become


def test_a_vaulted_broker_password_is_decrypted_and_never_cached(tmp_path, monkeypatch):
    password = "p@ss:w/rd%\"$#' spaced"
    vault_pass = tmp_path / "vault-pass"
    vault_pass.write_text("secret-of-the-vault\n")
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD_FILE", str(vault_pass))
    vaulted = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible-vault"), "encrypt_string", "--stdin-name",
                              "fleet_broker_password"], input=password, capture_output=True, text=True, check=True)
    inventory = _inventory(tmp_path)
    (inventory.parent / "group_vars").mkdir()
    (inventory.parent / "group_vars" / "all.yml").write_text(vaulted.stdout)
    loaded = fleet.load_fleet(inventory, environ={}, secrets_root=tmp_path)
    assert loaded.password_source == "inventory"
    assert loaded.broker_url == fleet.broker_url("10.9.9.4", password)
    assert "%40ss%3Aw%2Frd%25%22%24%23%27%20spaced" in loaded.broker_url
    assert all(password not in path.read_text() for path in fleet.INVENTORY_CACHE.glob("*.json"))


def test_a_password_file_named_by_the_inventory_is_read(tmp_path):
    secret = tmp_path / "broker-password"
    secret.write_text("from-a-file-0123456789\n")
    inventory = _inventory(tmp_path)
    (inventory.parent / "group_vars").mkdir()
    (inventory.parent / "group_vars" / "all.yml").write_text(f"fleet_broker_password_file: {secret}\n")
    loaded = fleet.load_fleet(inventory, environ={}, secrets_root=tmp_path)
    assert loaded.password_source == f"file:{secret}"
    assert loaded.broker_url == fleet.broker_url("10.9.9.4", "from-a-file-0123456789")


def test_unsupported_become_method_is_refused_naming_the_host(tmp_path):
    inventory = _inventory(tmp_path)
    inventory.write_text(inventory.read_text().replace("ansible_become: true", "ansible_become: true\n"
                                                       "          ansible_become_method: su"))
    with pytest.raises(fleet.FleetError, match="w1: ansible_become_method 'su'"):
        fleet.load_fleet(inventory, environ={}, secrets_root=tmp_path)


@pytest.mark.parametrize("args, expected", [
    (["-o", "ProxyJump=ops@bastion:2222", "-o", "StrictHostKeyChecking=no"],
     {"proxy_jump": "ops@bastion:2222", "strict": "no"}),
    (["-oUserKnownHostsFile=/a /b", "-J", "jump", "-p", "2200", "-i", "~/.ssh/k"],
     {"known_hosts": ("/a", "/b"), "proxy_jump": "jump", "port": 2200, "identity": "~/.ssh/k"}),
    (["-o", "ProxyCommand ssh -W %h:%p gw", "-o", "StrictHostKeyChecking=yes", "-o", "StrictHostKeyChecking=no"],
     {"proxy_command": "ssh -W %h:%p gw", "strict": "yes"}),  # ssh: the first value given wins
])
def test_ssh_options_are_read_as_ssh_reads_them(args, expected):
    options = ssh.ssh_options(args)
    assert {key: getattr(options, key) for key in expected} == expected


def test_host_key_checking_follows_ansible_and_the_inventory():
    host = fleet.Host("w", "10.0.0.1", ("celery_workers",))
    assert not isinstance(ssh._check_policy(True, ssh.ssh_options([])), paramiko.AutoAddPolicy)
    assert isinstance(ssh._check_policy(False, ssh.ssh_options([])), paramiko.AutoAddPolicy)
    assert isinstance(ssh._check_policy(True, ssh.ssh_options(["-o", "StrictHostKeyChecking=no"])),
                      paramiko.AutoAddPolicy)
    with pytest.raises(ssh.UnknownHostKey, match="10.0.0.1 is not in"):
        ssh._check_policy(True, ssh.ssh_options([])).missing_host_key(None, "10.0.0.1", None)
    assert ssh.connection(host, 3).client.get_host_keys() is not None


def test_privileged_commands_go_through_sudo_when_the_host_becomes():
    plain = fleet.Host("a", "10.0.0.1", ())
    sudo = fleet.Host("b", "10.0.0.2", (), become=True, become_user="root")
    assert ssh.privileged(plain, "systemctl restart celery.service") == "systemctl restart celery.service"
    assert ssh.privileged(sudo, "systemctl restart celery.service") == (
        "sudo -n -H -u root -- sh -c 'systemctl restart celery.service'")


def test_a_jump_host_takes_the_user_port_and_keys_of_its_spec():
    host = fleet.Host("w", "10.0.0.1", (), user="deploy", key_file="/k")
    jump = ssh._jump_host(host, "ops@[fd00::1]:2222")
    assert (jump.address, jump.user, jump.port, jump.key_file) == ("fd00::1", "ops", 2222, "/k")
    assert ssh._jump_host(host, "bastion").user == "deploy"
