"""Rolling restart of the broker nodes: one at a time, drained, restarted, revived, quorum back before the next."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetctl.inventory import Fleet, Host
from fleetctl.remote.ssh import RunResult, run_on_hosts

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_STEP_TIMEOUT = 300.0  # seconds one step of one node may take (a restart, a wait for quorum)
OK, FAIL, SKIPPED = "OK", "FAIL", "SKIPPED"

# The RabbitMQ CLI as user rabbitmq (Debian's wrappers would `su`, out of reach of `timeout`: see the rabbitmq
# role's files/rabbitmqctl.sh), each run bounded.
_AS_RABBITMQ = "timeout -k 5 {t} setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups"
# One node's restart, step by step: (name, command). {t}: the step's bound in seconds.
STEPS: tuple[tuple[str, str], ...] = (
    # Every quorum queue keeps a majority online without this node (RabbitMQ's own check): stop it safely.
    ("quorum", f"{_AS_RABBITMQ} rabbitmq-upgrade -q await_online_quorum_plus_one -t {{t}}"),
    # Maintenance mode: clients are disconnected (and reconnect to the other nodes), its queue leaders move away.
    # RabbitMQ 3.10's CLI can report a failure of a drain that happened (exit 69, "{:shutdown, 'Node was put into
    # maintenance mode'}"): the node's own maintenance status decides then.
    ("drain", f"{_AS_RABBITMQ} rabbitmq-upgrade -q drain || {_AS_RABBITMQ} rabbitmqctl -q cluster_status "
              "--formatter json | python3 -c 'import json, socket, sys; "
              "status = json.load(sys.stdin).get(\"maintenance_status\", {{}}); "
              "node = \"rabbit@\" + socket.gethostname().split(\".\")[0]; "
              "sys.exit(0 if status.get(node, \"not under maintenance\") != \"not under maintenance\" else 69)'"),
    ("restart", "timeout -k 5 {t} systemctl restart rabbitmq-server.service"),
    ("startup", f"{_AS_RABBITMQ} rabbitmqctl -q await_startup --timeout {{t}}"),
    # Maintenance mode outlives a restart: the node serves again only once revived.
    ("revive", f"{_AS_RABBITMQ} rabbitmq-upgrade -q revive"),
)
SINGLE_NODE_STEPS = ("restart", "startup")  # one broker: nothing to drain to, no quorum to wait for
STATUS_COMMAND = f"{_AS_RABBITMQ.format(t=60)} rabbitmqctl -q cluster_status --formatter json"


@dataclass(frozen=True)
class Event:
    """Progress of a broker restart: kind (check, step, node, result), host, data."""

    kind: str
    host: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


Listener = Callable[[Event], None]


@dataclass(frozen=True)
class NodeRestart:
    """One broker host's restart: status, the steps it went through (name -> seconds), why it failed."""

    host: str
    status: str
    steps: Mapping[str, float] = field(default_factory=dict)
    reason: str = ""


@dataclass(frozen=True)
class Outcome:
    """The whole run: refused (degraded cluster, with why), or each host's restart in order."""

    refused: tuple[str, ...] = ()
    nodes: tuple[NodeRestart, ...] = ()
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.refused and all(node.status == OK for node in self.nodes)


def _quiet(_: Event) -> None:
    """The default listener: says nothing."""


def degradations(fleet: Fleet, statuses: Mapping[str, RunResult]) -> list[str]:
    """Why the cluster is not whole, one sentence per problem (empty: whole): a node unreachable or not running,
    a node missing from another's view, a partition, an alarm."""
    problems, views = [], {}
    for name in fleet.broker_hosts:
        result = statuses.get(name)
        if result is None or not result.ok:
            why = (result.error or (result.stderr.strip().splitlines() or ["no answer"])[-1]) if result else "not asked"
            problems.append(f"{name}: broker not running or not answering: {why}")
            continue
        try:
            views[name] = json.loads(result.stdout)
        except ValueError:
            problems.append(f"{name}: cluster_status gave no JSON")
    for name, status in views.items():
        running = sorted(status.get("running_nodes") or [])
        if len(running) < len(fleet.broker_hosts):
            missing = sorted(set(status.get("disk_nodes") or []) - set(running))
            problems.append(f"{name}: {len(running)} of {len(fleet.broker_hosts)} nodes running"
                            + (f" (not running: {', '.join(missing)})" if missing else ""))
        if status.get("partitions"):
            problems.append(f"{name}: network partition: {json.dumps(status['partitions'], sort_keys=True)}")
        if status.get("alarms"):
            problems.append(f"{name}: alarms: {json.dumps(status['alarms'], sort_keys=True)}")
    return problems


def _step_command(step: str, bound: float) -> str:
    return dict(STEPS)[step].format(t=max(1, int(bound)))


def _failure(result: RunResult | None) -> str:
    if result is None:
        return "no answer"
    if result.error:
        return result.error
    lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return f"exit status {result.exited}" + (f": {lines[-1][:300]}" if lines else "")


def restart_node(host: Host, steps: Sequence[str], *, connect_timeout: float, step_timeout: float,
                 emit: Listener = _quiet) -> NodeRestart:
    """Run the steps on one broker host in order; stop at the first that fails."""
    done: dict[str, float] = {}
    for step in steps:
        started = time.monotonic()
        result = run_on_hosts([host], _step_command(step, step_timeout), connect_timeout=connect_timeout,
                              timeout=step_timeout + 10, become=True).get(host.name)
        done[step] = round(time.monotonic() - started, 2)
        ok = result is not None and result.ok
        emit(Event("step", host.name, {"step": step, "ok": ok, "seconds": done[step],
                                       "detail": "" if ok else _failure(result)}))
        if not ok:
            return NodeRestart(host.name, FAIL, done, f"{step} failed: {_failure(result)}")
    return NodeRestart(host.name, OK, done)


def cluster_statuses(fleet: Fleet, hosts: Sequence[Host], connect_timeout: float) -> dict[str, RunResult]:
    return run_on_hosts(hosts, STATUS_COMMAND, connect_timeout=connect_timeout, timeout=90, become=True)


def wait_whole(fleet: Fleet, hosts: Sequence[Host], connect_timeout: float, within: float) -> list[str]:
    """Bounded wait until every node runs in the cluster again; the problems still seen (empty: whole)."""
    deadline = time.monotonic() + within
    while True:
        problems = degradations(fleet, cluster_statuses(fleet, hosts, connect_timeout))
        if not problems or time.monotonic() > deadline:
            return problems
        time.sleep(2)


def rolling_restart(fleet: Fleet, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                    step_timeout: float = DEFAULT_STEP_TIMEOUT, emit: Listener = _quiet) -> Outcome:
    """Restart every broker node, one at a time, each only when the cluster is whole; refuse a degraded one."""
    started = time.monotonic()
    hosts = [fleet.host(name) for name in fleet.broker_hosts]
    problems = degradations(fleet, cluster_statuses(fleet, hosts, connect_timeout))
    emit(Event("check", data={"problems": problems}))
    if problems:
        return Outcome(refused=tuple(problems), elapsed=round(time.monotonic() - started, 2))
    steps = [name for name, _ in STEPS] if len(hosts) > 1 else list(SINGLE_NODE_STEPS)
    results: list[NodeRestart] = []
    for index, host in enumerate(hosts):
        emit(Event("node", host.name, {"number": index + 1, "of": len(hosts)}))
        node = restart_node(host, steps, connect_timeout=connect_timeout, step_timeout=step_timeout, emit=emit)
        if node.status == OK:
            waited = time.monotonic()
            left = wait_whole(fleet, hosts, connect_timeout, step_timeout)
            rejoin = round(time.monotonic() - waited, 2)
            node = NodeRestart(node.host, FAIL if left else OK, {**node.steps, "rejoin": rejoin},
                               f"the cluster is not whole again: {'; '.join(left)}" if left else "")
            emit(Event("step", host.name, {"step": "rejoin", "ok": not left, "seconds": node.steps["rejoin"],
                                           "detail": node.reason}))
        results.append(node)
        if node.status != OK:
            results += [NodeRestart(h.name, SKIPPED) for h in hosts[index + 1:]]
            break
    outcome = Outcome(nodes=tuple(results), elapsed=round(time.monotonic() - started, 2))
    emit(Event("result", data={"ok": outcome.ok}))
    return outcome
