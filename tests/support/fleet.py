"""Helpers shared by the fleet tests: make targets, sandbox state, testinfra hosts."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import testinfra

ROOT = Path(__file__).resolve().parents[2]
FLEETCTL = ROOT / ".venv" / "bin" / "fleetctl"
SANDBOX_INVENTORY = ROOT / "playbooks" / "inventories" / "sandbox" / "hosts.yml"
os.environ.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))
# ansible-inventory, for testinfra's ansible:// hosts
os.environ["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"


def fleet_env() -> dict[str, str]:
    """This process's environment without CELERY_* overrides (the app tests point those at loopback)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")}


def make(*args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run a make target from the repository root, output captured."""
    proc = subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, text=True, env=fleet_env(),
                          capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"make {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def sandbox_status() -> list[dict]:
    out = subprocess.run([str(FLEETCTL), "sandbox", "status", "--json"], cwd=ROOT, text=True,
                         capture_output=True, check=True).stdout
    return json.loads(out)


@dataclass
class Fleet:
    """A sandbox fleet that is up: its inventory and a testinfra host per inventory host."""

    inventory: Path
    deploy_output: str = ""

    def host(self, name: str):
        return testinfra.get_host(f"ansible://{name}?ansible_inventory={self.inventory}")

    def hosts(self) -> dict[str, dict]:
        rel = os.path.relpath(self.inventory, ROOT)
        return {row["host"]: row for row in sandbox_status() if row["inventory"] == rel}


def wait_active(app, node: str, task_id: str, within: float = 30) -> None:
    """Wait (a guard, not a speed bound) until node runs the task task_id."""
    deadline = time.monotonic() + within
    while True:
        active = (app.control.inspect(destination=[node], timeout=1, limit=1).active() or {}).get(node) or []
        if any(task["id"] == task_id for task in active):
            return
        assert time.monotonic() < deadline, f"{task_id} never started on {node}"
        time.sleep(0.3)
