"""The production-like fleet's inventory: a deploy login with sudo, templated ansible_host, a vaulted password."""

from __future__ import annotations

import secrets
import shutil
import subprocess

import yaml

from support.fleet import BIN, PRODUCTION_INVENTORY, fleet_env

INVENTORY = PRODUCTION_INVENTORY
VAULT_PASS = INVENTORY.parent.with_suffix(".vault-pass")
PASSWORD = "p@ss:w/rd%\"$#' and a space " + secrets.token_hex(4)  # every character that breaks a URL or sh


def write_inventory() -> None:
    """The inventory (git-ignored, as an operator's vault password is): the deploy login, each host's
    ansible_host a template, the broker password in a vaulted group var, the vault password in a file."""
    directory = INVENTORY.parent
    shutil.rmtree(directory, ignore_errors=True)
    (directory / "group_vars" / "all").mkdir(parents=True)
    VAULT_PASS.write_text(secrets.token_urlsafe(24) + "\n")
    VAULT_PASS.chmod(0o600)
    vaulted = subprocess.run([str(BIN / "ansible-vault"), "encrypt_string", "--stdin-name", "fleet_broker_password"],
                             input=PASSWORD, capture_output=True, text=True, check=True,
                             env=fleet_env({"ANSIBLE_VAULT_PASSWORD_FILE": str(VAULT_PASS)})).stdout
    (directory / "group_vars" / "all" / "vault.yml").write_text(vaulted)
    host = {"ansible_host": "{{ sandbox_address }}"}
    document = {"all": {"vars": {"sandbox_login": "deploy"}, "children": {
        "rabbitmq": {"hosts": {"prod-broker": dict(host)}},
        "celery_workers": {"hosts": {
            "prod-w1": {**host, "celery_worker_nodes": [{"name": "jobs", "queues": ["jobs", "celery"],
                                                         "concurrency": 1}]},
            "prod-w2": {**host, "celery_worker_nodes": [{"name": "jobs", "queues": ["jobs"], "concurrency": 1}]},
        }},
        "celery_beat": {"hosts": {"prod-w2": {}}},
    }}}
    INVENTORY.write_text(yaml.safe_dump(document, sort_keys=False))


def remove_inventory() -> None:
    shutil.rmtree(INVENTORY.parent, ignore_errors=True)
    VAULT_PASS.unlink(missing_ok=True)
