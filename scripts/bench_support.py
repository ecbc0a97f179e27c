"""Helpers the benchmarks share: run a command in the repository, deploy the default sandbox fleet."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run cmd in the repository root, output captured."""
    return subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)


def deploy_default_fleet() -> None:
    """`make deploy` of the default sandbox fleet (warm: nothing changes when it is up), or exit."""
    os.environ.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))
    deployed = run(["make", "--no-print-directory", "deploy"])
    if deployed.returncode != 0:
        raise SystemExit(f"bench: make deploy failed:\n{deployed.stdout[-3000:]}\n{deployed.stderr[-3000:]}")
