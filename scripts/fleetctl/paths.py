"""Where the repository, its default inventory and its state live on the controller."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SANDBOX_INVENTORY = REPO_ROOT / "playbooks" / "inventories" / "sandbox" / "hosts.yml"
STATE_DIR = REPO_ROOT / ".sandbox"
SECRETS_ROOT = REPO_ROOT / ".secrets"
CACHE_DIR = REPO_ROOT / ".cache"
ANSIBLE_CONFIG = REPO_ROOT / "ansible.cfg"
VENV_BIN = REPO_ROOT / ".venv" / "bin"


def default_inventory(environ: os._Environ | dict | None = None) -> str:
    """``$ANSIBLE_INVENTORY`` when set (its first entry), else the sandbox inventory."""
    environ = os.environ if environ is None else environ
    value = (environ.get("ANSIBLE_INVENTORY") or "").split(",")[0].strip()
    return value or str(SANDBOX_INVENTORY)
