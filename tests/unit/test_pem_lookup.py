"""The fleet role's fleet_pem lookup: a TLS variable's PEM, given as text or as a controller-side file."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from ansible.errors import AnsibleError
from ansible.parsing.dataloader import DataLoader
from ansible.parsing.vault import VaultLib, VaultSecret

PLUGIN = Path(__file__).resolve().parents[2] / "playbooks" / "roles" / "fleet" / "lookup_plugins" / "fleet_pem.py"
_spec = importlib.util.spec_from_file_location("fleet_pem", PLUGIN)
pem = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pem)

CERT = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----"
VAULT = [("default", VaultSecret(b"vault password of the test"))]


def _lookup(value, loader: DataLoader | None = None) -> str:
    return pem.LookupModule(loader=loader or DataLoader()).run([value], variables={})[0]


def test_pem_text_is_kept_and_ends_in_one_newline():
    assert _lookup(f"\n  {CERT}\n\n") == CERT + "\n"


def test_a_path_gives_the_files_content_ending_in_one_newline(tmp_path):
    (tmp_path / "ca.pem").write_text(CERT + "\n\n")
    assert _lookup(str(tmp_path / "ca.pem")) == CERT + "\n"


def test_an_ansible_vault_file_gives_its_decrypted_content(tmp_path):
    (tmp_path / "client.key").write_bytes(VaultLib(VAULT).encrypt(CERT + "\n"))
    loader = DataLoader()
    loader.set_vault_secrets(VAULT)
    assert _lookup(str(tmp_path / "client.key"), loader) == CERT + "\n"


@pytest.mark.parametrize("value", ["", None])
def test_an_unset_variable_gives_nothing(value):
    assert _lookup(value) == ""


def test_a_missing_file_is_an_error_naming_the_path(tmp_path):
    with pytest.raises(AnsibleError, match="nonexistent.pem"):
        _lookup(str(tmp_path / "nonexistent.pem"))
