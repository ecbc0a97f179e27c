"""Helpers of the deploy tests: `make deploy` runs, PLAY RECAP parsing, inventories of the sandbox hosts."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import testinfra
import yaml

from support.fleet import Fleet

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
    """`make deploy` of inventory (written for the hosts of a fleet; the default fleet's unless given), stdout and
    stderr captured together."""
    return Fleet.named("sandbox").deploy(inventory, check=check, timeout=timeout)


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


def _sandbox_stamp() -> tuple[tuple[str, int], ...]:
    """Each sandbox fleet's state file and its mtime: what the sandbox vars plugin reads (a cache key)."""
    return tuple(sorted((str(path), path.stat().st_mtime_ns)
                        for path in (ROOT / ".sandbox" / "fleets").glob("*/fleet.json")))


def _inventory_list(inventory: Path) -> dict:
    """`ansible-inventory --list` of the inventory (vars plugins included), as the sandbox is now."""
    return _inventory_listed(inventory, _sandbox_stamp())


@functools.lru_cache(maxsize=None)
def _inventory_listed(inventory: Path, _stamp: tuple) -> dict:
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible-inventory"), "-i", str(inventory), "--list"],
                         cwd=ROOT, text=True, capture_output=True, check=True,
                         env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))).stdout
    return json.loads(out)


def inventory_hostvars(inventory: Path = SANDBOX_INVENTORY) -> dict[str, dict]:
    """Every host's variables as Ansible sees them (vars plugins included; hosts without any are left out)."""
    return _inventory_list(inventory)["_meta"]["hostvars"]


def inventory_hosts(inventory: Path = SANDBOX_INVENTORY) -> list[str]:
    """Every host of the inventory, sorted."""
    listed = _inventory_list(inventory)
    return sorted({host for name, group in listed.items() if name != "_meta" for host in group.get("hosts", [])})


def sandbox_inventory() -> dict:
    """The sandbox inventory document (what `make deploy` deploys by default)."""
    return yaml.safe_load(SANDBOX_INVENTORY.read_text())


# Offline hosts: loopback addresses no SSH server answers, so a host that is contacted fails as unreachable.
OFFLINE_NETWORK = "127.255.0"
_OFFLINE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def _offline_hostvars(source: Path) -> dict[str, dict]:
    """What the sandbox vars plugin gives source's hosts, with an address that leads nowhere instead."""
    names = inventory_hosts(source)
    return {name: {"ansible_host": f"{OFFLINE_NETWORK}.{index}", "fleet_http_proxy": f"http://{OFFLINE_NETWORK}.1:8888",
                   "fleet_ca_bundle": _OFFLINE_CA_BUNDLE} for index, name in enumerate(names, start=2)}


def write_inventory(parent: Path, inventory: dict | str, source: Path = SANDBOX_INVENTORY,
                    offline: bool = False) -> Path:
    """An inventory of the running sandbox hosts of source in parent/<its directory name>/hosts.yml.

    Connection variables go to host_vars/. The directory is named like the source inventory's, so the
    deploy reuses that fleet's broker password (.secrets/sandbox/ for the default): only what the
    inventory itself changes differs on the hosts. The package proxy variables go to all.vars unless the
    inventory sets them (so it can get them wrong). offline: source's hosts get addresses that lead
    nowhere (OFFLINE_NETWORK) instead of the sandbox's, for preflight checks that need no fleet.
    """
    document = yaml.safe_load(inventory) if isinstance(inventory, str) else inventory
    directory = parent / source.parent.name
    (directory / "host_vars").mkdir(parents=True, exist_ok=True)
    fleet_vars = {}
    hostvars = _offline_hostvars(source) if offline else inventory_hostvars(source)
    for host_name, variables in hostvars.items():
        connection = {k: v for k, v in variables.items() if k.startswith("ansible_")}
        (directory / "host_vars" / f"{host_name}.yml").write_text(yaml.safe_dump(connection))
        fleet_vars.update({k: v for k, v in variables.items() if k.startswith("fleet_")})
    all_vars = document.setdefault("all", {}).setdefault("vars", {}) or {}
    document["all"]["vars"] = {**fleet_vars, **all_vars}
    (directory / "hosts.yml").write_text(yaml.safe_dump(document, sort_keys=False))
    return directory / "hosts.yml"


def deploy_all(inventories: dict[str, Path], at_once: int = 3) -> dict[str, subprocess.CompletedProcess]:
    """name -> `make deploy` of each inventory, at_once of them running at a time."""
    with ThreadPoolExecutor(max_workers=at_once) as pool:
        runs = {name: pool.submit(deploy, inventory) for name, inventory in inventories.items()}
        return {name: run.result() for name, run in runs.items()}


def selected_params(request, argname: str) -> list:
    """The values of parameter argname among the tests of request's module that this session runs."""
    values = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if item.module is request.module and callspec is not None and argname in callspec.params:
            values.append(callspec.params[argname])
    return values


def assert_refused_in_preflight(run: subprocess.CompletedProcess, expected: list[str], hidden: tuple[str, ...] = ()):
    """The deploy failed in preflight, named every expected fragment, showed none of hidden, changed and reached
    no host."""
    assert run.returncode != 0
    for fragment in expected:
        assert fragment in run.stdout, run.stdout[-3000:]
    for secret in hidden:
        assert secret not in run.stdout
    assert "PLAY [Broker, result backend, Flower and workers are installed and running]" not in run.stdout
    assert not re.search(r"^changed: \[", run.stdout, re.MULTILINE), run.stdout[-3000:]
    assert "UNREACHABLE!" not in run.stdout, run.stdout[-3000:]
    assert all(s["changed"] == 0 and s["unreachable"] == 0 for s in recap(run.stdout).values())


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
    """command run as root on a sandbox host of inventory over SSH (its connection variables; through sudo for
    a login that is not root), its stdout."""
    hv = inventory_hostvars(inventory)[host]
    login = hv.get("ansible_user", "root")
    args = ["ssh", "-i", hv["ansible_ssh_private_key_file"], *shlex.split(hv.get("ansible_ssh_common_args", "")),
            f"{login}@{hv['ansible_host']}", command if login == "root" else f"sudo -n sh -c {shlex.quote(command)}"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{inventory.parent.name}/{host}: {command[:80]}... exit {done.returncode}: "
                             f"{done.stderr[-2000:]}")
    return done.stdout
