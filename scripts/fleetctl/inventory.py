"""The fleet an Ansible inventory describes: hosts, Celery nodes, beat host, broadcast queues, broker URL.

Defaults follow docs/CONVENTIONS.md: ``celery_worker_nodes`` defaults to one node
``{name: celery, queues: [celery], concurrency: 2}``, ``celery_broadcast_queues`` to ``[broadcast]``. The
broker URL is ``amqp://celery:<password>@<rabbitmq host's ansible_host or name>:5672/celery`` with the
password from ``.secrets/<inventory directory name>/rabbitmq-celery-password``; CELERY_BROKER_URL in the
environment overrides it. ``Fleet.broker_url`` is None when neither is available, and never in ``repr``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fleetctl.errors import EXIT_USAGE, UnavailableError
from fleetctl.paths import ANSIBLE_CONFIG, CACHE_DIR, REPO_ROOT, SECRETS_ROOT

PASSWORD_FILE = "rabbitmq-celery-password"
BROKER_USER = "celery"
BROKER_VHOST = "celery"
BROKER_PORT = 5672
DEFAULT_NODE = {"name": "celery", "queues": ["celery"], "concurrency": 2}
DEFAULT_BROADCAST_QUEUES = ("broadcast",)
WORKERS_GROUP, BEAT_GROUP, BROKER_GROUP = "celery_workers", "celery_beat", "rabbitmq"
REDIS_GROUP = "redis"  # optional: the Redis result backend
MONITORING_GROUP = "monitoring"  # optional: Prometheus (its broker plugin serves queue metrics too)
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]*(?P<tail>@)", re.IGNORECASE)
_UNSAFE = "__ansible_unsafe"


class FleetError(UnavailableError):
    """The inventory cannot be read or breaks the fleet contract (exit 3)."""


class InventoryNotFound(FleetError):
    """The inventory path names nothing: a usage error (exit 2)."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Node:
    """One ``celery multi`` node of a host."""

    name: str
    host: str
    queues: tuple[str, ...]
    concurrency: int
    # (queue, options) of each queue entry that carries options ({max_priority, exchange, ...}).
    queue_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    @property
    def full_name(self) -> str:
        """``<name>@<inventory_hostname>``, the node's Celery name."""
        return f"{self.name}@{self.host}"


@dataclass(frozen=True)
class Host:
    """An inventory host: its address, groups, (worker hosts only) Celery nodes and SSH connection fields.

    The connection fields are what Ansible would use for the host, rendered by ansible-core
    (fleetctl.ansible_view): ``ansible_user``, ``ansible_port``, ``ansible_ssh_private_key_file`` (or
    their aliases), ``ansible_ssh_common_args``/``ansible_ssh_extra_args`` and ``ansible_become*``, with
    the configuration's defaults; None means "SSH's default".
    """

    name: str
    address: str
    groups: tuple[str, ...]
    nodes: tuple[Node, ...] = ()
    user: str | None = None
    port: int | None = None
    key_file: str | None = None
    ssh_args: tuple[str, ...] = ()  # ansible_ssh_common_args + ansible_ssh_extra_args, split as a shell would
    become: bool = False  # ansible_become: run privileged commands through become_method as become_user
    become_method: str = "sudo"
    become_user: str = "root"
    host_key_checking: bool = True  # Ansible's host_key_checking (configuration), as the tools honour it

    @property
    def is_worker(self) -> bool:
        return WORKERS_GROUP in self.groups

    @property
    def is_beat(self) -> bool:
        return BEAT_GROUP in self.groups

    @property
    def is_broker(self) -> bool:
        return BROKER_GROUP in self.groups


@dataclass(frozen=True)
class Fleet:
    """Hosts of an inventory and the fleet-wide settings."""

    hosts: tuple[Host, ...]
    beat_host: str | None
    broker_host: str | None  # the first of broker_hosts: the cluster's seed, or the one broker
    broadcast_queues: tuple[str, ...] = DEFAULT_BROADCAST_QUEUES
    broker_url: str | None = field(default=None, repr=False, compare=False)
    selected: frozenset[str] | None = None  # --limit: the hosts worked on (None: every host)
    # Where the deploy takes the broker password: "secrets" (.secrets/<inventory dir>/), "inventory"
    # (fleet_broker_password, e.g. from ansible-vault) or "file:<path>" (fleet_broker_password_file).
    password_source: str = "secrets"
    redis_host: str | None = None  # the result backend's host (group redis), if any
    broker_metrics: bool = False  # the broker runs rabbitmq_prometheus (rabbitmq_prometheus_enabled)
    broker_hosts: tuple[str, ...] = ()  # every host of group rabbitmq, in inventory order (a cluster: several)

    def limited(self, names: Iterable[str] | None) -> Fleet:
        """The same fleet with only names worked on (health, restart, broadcast); None: every host."""
        return replace(self, selected=None if names is None else frozenset(names))

    def in_scope(self, host: Host) -> bool:
        """Whether host is worked on (in the --limit, or there is none)."""
        return self.selected is None or host.name in self.selected

    def host(self, name: str) -> Host:
        """The host called name (KeyError if none)."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    @property
    def workers(self) -> tuple[Host, ...]:
        """Hosts in group celery_workers, in inventory order."""
        return tuple(host for host in self.hosts if host.is_worker and self.in_scope(host))

    @property
    def nodes(self) -> tuple[Node, ...]:
        """Every Celery node of the fleet."""
        return tuple(node for host in self.workers for node in host.nodes)

    @property
    def node_names(self) -> tuple[str, ...]:
        """Full names of every Celery node."""
        return tuple(node.full_name for node in self.nodes)

    @property
    def beat(self) -> Host | None:
        """The beat host, if the inventory has one."""
        return self.host(self.beat_host) if self.beat_host else None

    @property
    def broker_address(self) -> str | None:
        """Address of the rabbitmq host."""
        return self.host(self.broker_host).address if self.broker_host else None

    def require_broker_url(self, inventory: str | os.PathLike = "") -> str:
        """The broker URL, or FleetError saying where it would come from."""
        if self.broker_url:
            return self.broker_url
        where = inventory or "inventory"
        raise FleetError(f"{where}: no broker URL (no rabbitmq host, or no "
                         f"{secrets_dir(inventory or '.')}/{PASSWORD_FILE}: deploy first; CELERY_BROKER_URL overrides)")


def unwrap(value: Any) -> Any:
    """value with ansible-inventory's ``{"__ansible_unsafe": x}`` markers replaced by x."""
    if isinstance(value, dict):
        if set(value) == {_UNSAFE}:
            return unwrap(value[_UNSAFE])
        return {key: unwrap(item) for key, item in value.items()}
    if isinstance(value, list):
        return [unwrap(item) for item in value]
    return value


def _group_members(data: Mapping[str, Any]) -> dict[str, list[str]]:
    """Group name -> hosts in it directly or through child groups, in inventory order."""
    members: dict[str, list[str]] = {}

    def walk(group: str, seen: frozenset[str]) -> list[str]:
        if group in members:
            return members[group]
        entry = data.get(group) or {}
        hosts = list(entry.get("hosts") or [])
        for child in entry.get("children") or []:
            if child not in seen:
                hosts += [host for host in walk(child, seen | {group}) if host not in hosts]
        members[group] = hosts
        return hosts

    for group in data:
        if group != "_meta":
            walk(group, frozenset())
    return members


def _nodes(host: str, hostvars: Mapping[str, Any]) -> tuple[Node, ...]:
    entries = hostvars.get("celery_worker_nodes")
    if entries is None:
        entries = [DEFAULT_NODE]
    if not isinstance(entries, list) or not entries:
        raise FleetError(f"{host}: celery_worker_nodes must be a non-empty list")
    nodes = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise FleetError(f"{host}: every celery_worker_nodes entry needs a name")
        queues = entry.get("queues", DEFAULT_NODE["queues"])
        options = ()
        if isinstance(queues, list):  # an entry is a name or {name: ..., max_priority: ...} (queue options)
            options = tuple((q.get("name"), tuple(sorted((k, v) for k, v in q.items() if k != "name")))
                            for q in queues if isinstance(q, dict) and len(q) > 1)
            queues = [q.get("name") if isinstance(q, dict) else q for q in queues]
        concurrency = entry.get("concurrency", DEFAULT_NODE["concurrency"])
        if not isinstance(queues, list) or not queues or not all(isinstance(q, str) and q for q in queues):
            raise FleetError(f"{host}: celery_worker_nodes {entry['name']}: queues must be a non-empty list of names")
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise FleetError(f"{host}: celery_worker_nodes {entry['name']}: concurrency must be a positive integer")
        nodes.append(Node(entry["name"], host, tuple(queues), concurrency, options))
    names = [node.name for node in nodes]
    if len(set(names)) != len(names):
        raise FleetError(f"{host}: celery_worker_nodes names must be unique")
    return tuple(nodes)


BECOME_METHODS = ("sudo",)


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")


def _connection(host: str, hostvars: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Host's SSH connection fields from its hostvars, else Ansible's configured defaults; missing ones are None."""
    defaults = defaults or {}

    def first(*names: str) -> Any:
        found = next((hostvars[name] for name in names if hostvars.get(name) not in (None, "")), None)
        return defaults.get(names[0]) if found is None else found

    port = first("ansible_port", "ansible_ssh_port")
    if port is not None:
        if isinstance(port, bool) or not str(port).strip().isdigit() or not 0 < int(port) < 65536:
            raise FleetError(f"{host}: ansible_port must be a TCP port number, not {port!r}")
        port = int(port)
    user = first("ansible_user", "ansible_ssh_user")
    key_file = first("ansible_ssh_private_key_file", "ansible_private_key_file")
    args = " ".join(str(hostvars.get(name) or "") for name in ("ansible_ssh_common_args", "ansible_ssh_extra_args"))
    try:
        ssh_args = tuple(shlex.split(args))
    except ValueError as exc:
        raise FleetError(f"{host}: ansible_ssh_common_args does not split as a shell would: {exc}") from None
    become = _flag(first("ansible_become") or False)
    method = str(first("ansible_become_method") or "sudo")
    if become and method not in BECOME_METHODS:
        raise FleetError(f"{host}: ansible_become_method {method!r}: fleetctl supports {', '.join(BECOME_METHODS)}")
    return {"user": None if user is None else str(user), "port": port,
            "key_file": None if key_file is None else str(key_file), "ssh_args": ssh_args, "become": become,
            "become_method": method, "become_user": str(first("ansible_become_user") or "root"),
            "host_key_checking": _flag(defaults.get("host_key_checking", True))}


def _broadcast_queues(workers: list[str], hostvars: Mapping[str, Mapping[str, Any]]) -> tuple[str, ...]:
    found = {tuple(hostvars.get(host, {}).get("celery_broadcast_queues", DEFAULT_BROADCAST_QUEUES)) for host in workers}
    if len(found) > 1:
        raise FleetError("celery_workers hosts disagree on celery_broadcast_queues")
    queues = found.pop() if found else DEFAULT_BROADCAST_QUEUES
    if not queues or not all(isinstance(q, str) and q for q in queues):
        raise FleetError("celery_broadcast_queues must be a non-empty list of names")
    return queues


def parse_inventory(data: Mapping[str, Any]) -> Fleet:
    """The Fleet described by ``ansible-inventory --list`` output (already JSON-decoded)."""
    data = unwrap(dict(data))
    hostvars: dict[str, dict[str, Any]] = (data.get("_meta") or {}).get("hostvars") or {}
    members = _group_members(data)
    order: list[str] = []
    for group in ["all", *members]:
        order += [host for host in members.get(group, []) if host not in order]
    order += [host for host in hostvars if host not in order]
    groups_of = {host: tuple(g for g in members if g != "all" and host in members[g]) for host in order}

    beat = members.get(BEAT_GROUP, [])
    if len(beat) > 1:
        raise FleetError(f"{BEAT_GROUP} must hold exactly one host (has {', '.join(beat)})")
    workers = members.get(WORKERS_GROUP, [])
    hosts = tuple(
        Host(
            name=host,
            address=str(hostvars.get(host, {}).get("ansible_host") or host),
            groups=groups_of[host],
            nodes=_nodes(host, hostvars.get(host, {})) if host in workers else (),
            **_connection(host, hostvars.get(host, {}), (data.get("_meta") or {}).get("defaults")),
        )
        for host in order
    )
    brokers = members.get(BROKER_GROUP, [])
    broker_vars = hostvars.get(brokers[0], {}) if brokers else {}
    if broker_vars.get("fleet_broker_password_set"):
        source = "inventory"
    elif broker_vars.get("fleet_broker_password_file"):
        source = f"file:{broker_vars['fleet_broker_password_file']}"
    else:
        source = "secrets"
    return Fleet(
        hosts=hosts,
        beat_host=beat[0] if beat else None,
        broker_host=brokers[0] if brokers else None,
        broadcast_queues=_broadcast_queues(workers, hostvars),
        password_source=source,
        redis_host=(members.get(REDIS_GROUP) or [None])[0],
        broker_metrics=_broker_metrics(broker_vars, bool(members.get(MONITORING_GROUP)) or len(brokers) > 1),
        broker_hosts=tuple(brokers),
    )


def _broker_metrics(broker_vars: Mapping[str, Any], default_on: bool) -> bool:
    """rabbitmq_prometheus_enabled as the role resolves it: the inventory's value, else on with a monitoring host or a
    cluster (default_on)."""
    value = broker_vars.get("rabbitmq_prometheus_enabled")
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and "{" not in value:
        return value.strip().lower() in ("true", "yes", "on", "1")
    return default_on


def broker_url(address: str, password: str) -> str:
    """The fleet's AMQP URL for the celery user at address."""
    host = f"[{address}]" if ":" in address else address
    return f"amqp://{BROKER_USER}:{quote(password, safe='')}@{host}:{BROKER_PORT}/{BROKER_VHOST}"


def redact(text: str) -> str:
    """text with the password of every URL in it replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\g<head>***\g<tail>", text)


def secrets_dir(inventory: str | os.PathLike, root: Path = SECRETS_ROOT) -> Path:
    """``.secrets/<basename of the inventory directory>`` for an inventory file or directory."""
    path = Path(inventory).resolve()
    return root / (path if path.is_dir() else path.parent).name


def read_password(inventory: str | os.PathLike, root: Path = SECRETS_ROOT) -> str | None:
    """The broker password generated for inventory, or None when there is none yet."""
    try:
        return (secrets_dir(inventory, root) / PASSWORD_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


INVENTORY_CACHE = CACHE_DIR / "inventory"


def _inventory_inputs(inventory: Path) -> list[Path]:
    """Files ansible-inventory's answer depends on: the inventory, its group_vars/host_vars, sandbox state, config."""
    base = inventory if inventory.is_dir() else inventory.parent
    files = [p for p in base.iterdir() if p.is_file()] if inventory.is_dir() else [inventory]
    for vars_dir in ("group_vars", "host_vars"):
        files += [p for p in (base / vars_dir).rglob("*") if p.is_file()]
    files += sorted((REPO_ROOT / ".sandbox" / "fleets").glob("*/fleet.json"))
    files += [ANSIBLE_CONFIG, *sorted((REPO_ROOT / "playbooks" / "plugins").rglob("*.py"))]
    return sorted(set(files))


def inventory_fingerprint(inventory: Path, files: list[Path], environ: Mapping[str, str]) -> str:
    """Hash of an inventory's inputs (paths, sizes, mtimes) and the ANSIBLE_* environment."""
    parts = [str(inventory)]
    for path in files:
        with contextlib.suppress(OSError):
            info = path.stat()
            parts.append(f"{path}:{info.st_size}:{info.st_mtime_ns}")
    parts += sorted(f"{k}={v}" for k, v in environ.items() if k.startswith("ANSIBLE_"))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def run_ansible_inventory(inventory: str | os.PathLike, timeout: float = 120,
                          limit: str | None = None) -> dict[str, Any]:
    """``ansible-inventory -i inventory --list [--limit]``, decoded; cached until one of its inputs changes."""
    path = Path(inventory).resolve()
    if not path.exists():
        raise InventoryNotFound(f"inventory not found: {inventory}")
    key = inventory_fingerprint(path, _inventory_inputs(path), {**os.environ, "ANSIBLE_LIMIT": limit or ""})
    prefix = hashlib.sha256(f"{path}\0{limit or ''}".encode()).hexdigest()[:12]
    cached = INVENTORY_CACHE / f"{prefix}-{key[:24]}.json"
    with contextlib.suppress(OSError, ValueError):
        return json.loads(cached.read_text())
    data = _ansible_view(path, timeout, limit)
    with contextlib.suppress(OSError):
        INVENTORY_CACHE.mkdir(parents=True, exist_ok=True)
        for stale in INVENTORY_CACHE.glob(f"{prefix}-*.json"):
            stale.unlink(missing_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(cached)
    return data


def _ansible_view(inventory: Path, timeout: float, limit: str | None = None, secrets: bool = False) -> dict[str, Any]:
    """The inventory as ansible-core renders it (fleetctl.ansible_view in a child process), decoded."""
    command = [sys.executable, "-m", "fleetctl.ansible_view", str(Path(inventory).resolve()),
               "--playbook-dir", str(REPO_ROOT / "playbooks")]
    command += ["--limit", limit] if limit else []
    command += ["--secrets"] if secrets else []
    # An inventory ansible cannot parse is an error, not an empty fleet.
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE_CONFIG), "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True"}
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FleetError(f"reading the inventory failed: {exc}") from None
    if done.returncode != 0:
        text = done.stderr.strip()
        with contextlib.suppress(ValueError, TypeError, KeyError):
            raise FleetError(redact(json.loads(text.splitlines()[-1])["error"]))
        raise FleetError(f"reading the inventory failed: {redact(text[-2000:])}")
    try:
        return json.loads(done.stdout)
    except ValueError as exc:
        raise FleetError(f"reading the inventory printed no JSON: {exc}") from None


def _selected(data: Mapping[str, Any], inventory: str | os.PathLike, pattern: str) -> tuple[str, ...]:
    """The hosts a ``--limit`` pattern selected in a listing; FleetError when it selected none."""
    names = tuple((data.get("_meta") or {}).get("selected") or ())
    if not names:
        raise InventoryNotFound(f"{inventory}: --limit {pattern!r} matches no host")
    return names


def load_fleet(
    inventory: str | os.PathLike, *, environ: Mapping[str, str] | None = None, secrets_root: Path = SECRETS_ROOT,
    limit: str | None = None,
) -> Fleet:
    """The Fleet of inventory, with its broker URL (CELERY_BROKER_URL overrides the secrets file)."""
    environ = os.environ if environ is None else environ
    # One listing: with a limit it is the whole inventory too, plus the hosts the limit selects.
    data = run_ansible_inventory(inventory, limit=limit)
    fleet = parse_inventory(data).limited(_selected(data, inventory, limit) if limit else None)
    url = environ.get("CELERY_BROKER_URL") or None
    if url is None and fleet.broker_address:
        password = fleet_password(fleet, inventory, secrets_root)
        # A cluster: every node, the seed first (kombu fails over between ';'-separated URLs, as the workers do).
        addresses = [fleet.host(name).address for name in fleet.broker_hosts] or [fleet.broker_address]
        url = ";".join(broker_url(address, password) for address in addresses) if password else None
    return replace(fleet, broker_url=url)


def fleet_password(fleet: Fleet, inventory: str | os.PathLike, secrets_root: Path = SECRETS_ROOT) -> str | None:
    """The broker password from where the deploy takes it (the same source, never cached on disk)."""
    if fleet.password_source == "inventory":  # decrypted by ansible-core on every call (vault)
        data = _ansible_view(Path(inventory).resolve(), 120, secrets=True)
        hostvars = (data.get("_meta") or {}).get("hostvars") or {}
        value = hostvars.get(fleet.broker_host, {}).get("fleet_broker_password")
        return str(value) if value not in (None, "") else None
    if fleet.password_source.startswith("file:"):
        with contextlib.suppress(OSError):
            return Path(fleet.password_source[5:]).expanduser().read_text(encoding="utf-8").strip() or None
        return None
    return read_password(inventory, secrets_root)
