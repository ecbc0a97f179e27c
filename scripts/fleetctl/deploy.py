"""The ansible-playbook command line of a deploy, built from fleetctl's options (no side effects)."""
from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from fleetctl.errors import UsageError
from fleetctl.paths import ANSIBLE_CONFIG, REPO_ROOT, SANDBOX_INVENTORY

PLAYBOOK = REPO_ROOT / "playbooks" / "site.yml"


def is_sandbox(inventory: str | os.PathLike) -> bool:
    """Whether the inventory is the default sandbox fleet (the one a deploy boots first)."""
    return Path(inventory).resolve() == SANDBOX_INVENTORY.resolve()


def split_extra(text: str | None) -> list[str]:
    """ANSIBLE_ARGS as words, quotes honoured (``-e 'a=1 b=2'`` stays one argument)."""
    try:
        return shlex.split(text or "")
    except ValueError as exc:
        raise UsageError(f"ANSIBLE_ARGS: {exc}: {text!r}") from None


def playbook_command(inventory: str, limit: str | None = None, check: bool = False,
                     extra: Sequence[str] = (), bin_dir: str | os.PathLike = "") -> list[str]:
    """argv of ansible-playbook for site.yml; a missing inventory is a usage error."""
    if not Path(inventory).exists():
        raise UsageError(f"inventory {inventory}: no such file or directory")
    command = [str(Path(bin_dir) / "ansible-playbook") if bin_dir else "ansible-playbook", "-i", str(inventory)]
    if limit:
        command += ["--limit", limit]
    if check:
        command += ["--check", "--diff"]
    return [*command, *extra, str(PLAYBOOK)]


def playbook_environment(environ: dict[str, str] | os._Environ | None = None) -> dict[str, str]:
    """The environment ansible-playbook runs in: the repository's ansible.cfg unless one is set."""
    env = dict(os.environ if environ is None else environ)
    env.setdefault("ANSIBLE_CONFIG", str(ANSIBLE_CONFIG))
    return env
