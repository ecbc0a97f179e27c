"""The fleet role's fleet_pem filter: a TLS variable's PEM, given as text or as a controller-side file."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

PLUGIN = Path(__file__).resolve().parents[2] / "playbooks" / "roles" / "fleet" / "filter_plugins" / "fleet_pem.py"
_spec = importlib.util.spec_from_file_location("fleet_pem", PLUGIN)
pem = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pem)

CERT = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----"


def test_pem_text_is_kept_and_ends_in_one_newline():
    assert pem.fleet_pem(f"\n  {CERT}\n\n") == CERT + "\n"


def test_a_path_gives_the_files_content_ending_in_one_newline(tmp_path):
    (tmp_path / "ca.pem").write_text(CERT + "\n\n")
    assert pem.fleet_pem(str(tmp_path / "ca.pem")) == CERT + "\n"


@pytest.mark.parametrize("value", ["", None])
def test_an_unset_variable_gives_nothing(value):
    assert pem.fleet_pem(value) == ""


def test_a_missing_file_is_an_error_naming_the_path(tmp_path):
    with pytest.raises(AnsibleFilterError, match="nonexistent.pem"):
        pem.fleet_pem(str(tmp_path / "nonexistent.pem"))
