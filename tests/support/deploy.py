"""Helpers of the deploy tests: `make deploy` runs, PLAY RECAP parsing, inventories of the sandbox hosts."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import testinfra
import yaml

ROOT = Path(__file__).resolve().parents[2]
SANDBOX_INVENTORY = ROOT / "playbooks" / "inventories" / "sandbox" / "hosts.yml"
BAD_INVENTORIES = ROOT / "tests" / "inventories"
ENV_FILE = "/etc/conf.d/celery"
OPERATOR = ". /etc/conf.d/celery && $CELERY_BIN -A $CELERY_APP"

_RECAP = re.compile(r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
                    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)", re.MULTILINE)
# Files the deploy writes, and the celery service's start time: a host's deploy-visible state.
_FINGERPRINT = ("sha256sum /etc/conf.d/celery /etc/systemd/system/celery.service /etc/systemd/system/celery@.service "
                "/etc/systemd/system/celerybeat.service /etc/apt/apt.conf.d/90fleet-proxy /etc/pip.conf "
                "/etc/tmpfiles.d/celery.conf 2>/dev/null; ls /etc/systemd/system/celery.service.wants 2>/dev/null; "
                "systemctl show -p ActiveEnterTimestamp -p InvocationID celery.service 'celery@*.service' "
                "rabbitmq-server.service")


def deploy(inventory: Path | None = None, check: bool = False, timeout: float = 1800) -> subprocess.CompletedProcess:
    """`make deploy` (default inventory unless given), stdout and stderr captured together."""
    args = ["make", "--no-print-directory", "deploy"]
    if inventory is not None:
        args.append(f"INVENTORY={inventory}")
    if check:
        args.append("CHECK=1")
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(args, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout, env=env)


def recap(output: str) -> dict[str, dict[str, int]]:
    """host -> {ok, changed, unreachable, failed} from the PLAY RECAP of an ansible-playbook run."""
    return {m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
            for m in _RECAP.finditer(output)}


_TASK = re.compile(r"^TASK \[(?P<task>.*)\] \*+$")
_CHANGED = re.compile(r"^changed: \[(?P<host>[^\]\s]+)")


def changed_tasks(output: str) -> list[str]:
    """'host: task' for every task that reported changed in an ansible-playbook run, in run order."""
    found, task = [], ""
    for line in output.splitlines():
        if m := _TASK.match(line):
            task = m["task"]
        elif m := _CHANGED.match(line):
            found.append(f"{m['host']}: {task}")
    return found


@functools.lru_cache(maxsize=None)
def inventory_hostvars(inventory: Path = SANDBOX_INVENTORY) -> dict[str, dict]:
    """Every host's variables as Ansible sees them (vars plugins included)."""
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible-inventory"), "-i", str(inventory), "--list"],
                         cwd=ROOT, text=True, capture_output=True, check=True,
                         env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))).stdout
    return json.loads(out)["_meta"]["hostvars"]


def sandbox_inventory() -> dict:
    """The sandbox inventory document (what `make deploy` deploys by default)."""
    return yaml.safe_load(SANDBOX_INVENTORY.read_text())


def write_inventory(parent: Path, inventory: dict | str, source: Path = SANDBOX_INVENTORY) -> Path:
    """An inventory of the running sandbox hosts of source in parent/<its directory name>/hosts.yml.

    Connection variables go to host_vars/. The directory is named like the source inventory's, so the
    deploy reuses that fleet's broker password (.secrets/sandbox/ for the default): only what the
    inventory itself changes differs on the hosts. The package proxy variables go to all.vars unless the
    inventory sets them (so it can get them wrong).
    """
    document = yaml.safe_load(inventory) if isinstance(inventory, str) else inventory
    directory = parent / source.parent.name
    (directory / "host_vars").mkdir(parents=True, exist_ok=True)
    fleet_vars = {}
    for host_name, variables in inventory_hostvars(source).items():
        connection = {k: v for k, v in variables.items() if k.startswith("ansible_")}
        (directory / "host_vars" / f"{host_name}.yml").write_text(yaml.safe_dump(connection))
        fleet_vars.update({k: v for k, v in variables.items() if k.startswith("fleet_")})
    all_vars = document.setdefault("all", {}).setdefault("vars", {}) or {}
    document["all"]["vars"] = {**fleet_vars, **all_vars}
    (directory / "hosts.yml").write_text(yaml.safe_dump(document, sort_keys=False))
    return directory / "hosts.yml"


@functools.lru_cache(maxsize=None)
def host(name: str, inventory: Path = SANDBOX_INVENTORY):
    """A testinfra host of the inventory (cached: each lookup runs ansible-inventory)."""
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={inventory}")


def fingerprint(names: list[str], inventory: Path = SANDBOX_INVENTORY) -> dict[str, str]:
    """host -> checksums of the files the deploy writes and the start time of its services."""
    return {name: host(name, inventory).run(_FINGERPRINT).stdout for name in names}


def active_queues(worker, nodes: list[str]) -> dict[str, set[str]]:
    """node -> names of the queues it consumes (broadcast queues by their alias), from inspect active_queues."""
    result = worker.run(f"cd /tmp && {OPERATOR} inspect active_queues --json --timeout 5 -d {','.join(nodes)}")
    assert result.rc == 0, result.stderr
    return {node: {q.get("alias") or q["name"] for q in queues} for node, queues in json.loads(result.stdout).items()}


def pinged_nodes(worker, nodes: list[str] | None = None) -> set[str]:
    """Nodes that answer inspect ping (all nodes of the fleet, or only the given ones)."""
    destination = f" -d {','.join(nodes)}" if nodes else ""
    result = worker.run(f"cd /tmp && {OPERATOR} inspect ping --json --timeout 3{destination}")
    return set(json.loads(result.stdout)) if result.rc == 0 else set()


def ssh(inventory: Path, host: str, command: str, timeout: float = 150, check: bool = True) -> str:
    """command run as root on a sandbox host of inventory over SSH (its connection variables), its stdout."""
    hv = inventory_hostvars(inventory)[host]
    args = ["ssh", "-i", hv["ansible_ssh_private_key_file"], *shlex.split(hv.get("ansible_ssh_common_args", "")),
            f"root@{hv['ansible_host']}", command]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{host}: {command[:80]}... exit {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout
