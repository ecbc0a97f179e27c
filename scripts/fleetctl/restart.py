"""Rolling restart of the fleet's Celery workers, SERIAL hosts at a time: drain, wait, restart, verify.

For each batch of worker hosts (group celery_workers, inventory order): every node of the batch stops
consuming (``cancel_consumer`` of each queue it consumes), its running and reserved tasks are waited for
(at most the drain timeout: the warm shutdown still lets them finish), ``systemctl restart celery`` runs
on the batch's hosts, and the batch is verified: every node
answers ping with its queues, celery.service active, each node running once. The first batch that is not
healthy stops the run; a batch whose restart failed, or that was interrupted (Ctrl-C), gets its drained
queues back (``add_consumer``) first. Progress goes to ``on_event`` as it happens; nothing here prints.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetctl.errors import Interrupted
from fleetctl.health.gather import probe_hosts
from fleetctl.health.model import FAIL as HEALTH_FAIL
from fleetctl.health.model import OK as HEALTH_OK
from fleetctl.health.model import WORKER_UNIT, Finding, Probe
from fleetctl.health.verdict import (
    consumed_queue_names,
    expected_queues,
    node_row,
    queue_drift,
    unit_state,
    worker_processes,
)
from fleetctl.inventory import Fleet, Host, Node, redact
from fleetctl.remote import control
from fleetctl.remote.control import CeleryView, inspect_nodes
from fleetctl.remote.ssh import run_on_hosts

OK, FAIL, SKIPPED = "OK", "FAIL", "SKIPPED"
DEFAULT_SERIAL = 1
DEFAULT_DRAIN_TIMEOUT = 60.0
DEFAULT_RESTART_TIMEOUT = 900.0  # above the units' TimeoutStopSec (task time limit + margin) + start
DEFAULT_VERIFY_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 3.0
POLL = 0.5  # seconds between two checks while draining or verifying
RESTART_COMMAND = "systemctl restart celery.service"

Listener = Callable[["Event"], None]


@dataclass(frozen=True)
class Event:
    """Progress of a rolling restart: ``kind`` is batch, draining, drain, restart, verify, resume or interrupted."""

    kind: str
    batch: int
    host: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Drain:
    """What draining a batch's nodes did: queues cancelled per node, tasks still running when it ended."""

    planned: dict[str, list[str]] = field(default_factory=dict)  # node -> queues it was asked to cancel
    cancelled: dict[str, list[str]] = field(default_factory=dict)  # node -> queues it confirmed cancelled
    busy: dict[str, int] = field(default_factory=dict)  # node -> active + reserved tasks left
    silent: tuple[str, ...] = ()  # nodes that did not answer (not drained)
    seconds: float = 0.0
    error: str | None = None  # the broker failed while draining: the batch is not restarted

    @property
    def idle(self) -> bool:
        return not any(self.busy.values())


@dataclass(frozen=True)
class Step:
    """The restart command on one host: whether it worked, why not, how long it took."""

    ok: bool
    code: str = ""
    detail: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Verdict:
    """Health of a batch after its restart: host -> findings that are not OK, and the wait."""

    healthy: bool
    problems: Mapping[str, tuple[Finding, ...]] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class HostRestart:
    """One worker host of the rolling restart."""

    host: str
    nodes: tuple[str, ...]
    status: str  # OK, FAIL, SKIPPED (not reached: an earlier batch failed)
    findings: tuple[Finding, ...] = ()
    batch: int = 0
    queues_cancelled: int = 0
    tasks_left: int = 0  # active + reserved tasks still on the host's nodes when the drain ended
    drain_seconds: float = 0.0
    restart_seconds: float = 0.0
    verify_seconds: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """Every worker host of the run, in restart order."""

    inventory: str
    serial: int
    hosts: tuple[HostRestart, ...]
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return all(host.status == OK for host in self.hosts)

    @property
    def stopped_at(self) -> tuple[str, ...]:
        return tuple(host.host for host in self.hosts if host.status == FAIL)


# Pure helpers.

def batches(hosts: Sequence[Host], serial: int) -> list[tuple[Host, ...]]:
    """hosts in groups of serial, in order."""
    if serial < 1:
        raise ValueError(f"serial must be >= 1, not {serial}")
    return [tuple(hosts[i:i + serial]) for i in range(0, len(hosts), serial)]


def inventory_queue_names(node: Node, broadcast: Sequence[str]) -> tuple[str, ...]:
    """The AMQP queue names node consumes per the inventory: its queues, then its own broadcast queues."""
    from celery_app.broadcast import broadcast_queue

    return (*node.queues, *(broadcast_queue(name, node.full_name).name for name in broadcast))


def queues_to_cancel(nodes: Sequence[Node], answers: Mapping[str, Any],
                     broadcast: Sequence[str]) -> dict[str, list[str]]:
    """Queue name -> nodes to cancel it on: what each node reports consuming, else its inventory queues."""
    by_queue: dict[str, list[str]] = {}
    for node in nodes:
        consumed = answers.get(node.full_name)
        names = ([q["name"] for q in consumed if q.get("name")] if isinstance(consumed, list)
                 else inventory_queue_names(node, broadcast))
        for name in names:
            by_queue.setdefault(name, []).append(node.full_name)
    return by_queue


def count_tasks(*answers: Mapping[str, Any] | None) -> dict[str, int]:
    """node -> number of tasks over several ``inspect active/reserved`` answers (nodes that answered all)."""
    answered = [set(answer or {}) for answer in answers]
    nodes = set.intersection(*answered) if answered else set()
    return {node: sum(len((answer or {}).get(node) or []) for answer in answers) for node in sorted(nodes)}


def _by_queue(per_node: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    by_queue: dict[str, list[str]] = {}
    for node, queues in per_node.items():
        for queue in queues:
            by_queue.setdefault(queue, []).append(node)
    return by_queue


def judge(nodes: Sequence[Node], hosts: Sequence[Host], probes: Mapping[str, Probe], view: CeleryView,
          broadcast: Sequence[str]) -> dict[str, tuple[Finding, ...]]:
    """host -> findings on why it is not healthy after a restart (empty: healthy).

    Healthy: celery.service active, every node answers ping, consumes exactly its queues, runs once.
    Host metrics (load, memory, disk) and beat are not what a restart changes: not judged here.
    """
    processes = worker_processes(probes)
    problems: dict[str, list[Finding]] = {host.name: [] for host in hosts}
    for host in hosts:
        probe = probes.get(host.name) or Probe(host.name, error="not probed", down=True)
        if probe.down or probe.data is None:
            problems[host.name].append(Finding(HEALTH_FAIL, "probe_failed", {"error": probe.error}))
        else:
            state = unit_state(probe.data, WORKER_UNIT)
            if state["active"] != "active":
                problems[host.name].append(Finding(HEALTH_FAIL, "unit_not_active", state))
        for node in (n for n in nodes if n.host == host.name):
            row = node_row(node, probe, view, broadcast, processes)
            if row.status != HEALTH_OK:
                problems[host.name] += [Finding(f.status, f.code, {**f.params, "node": node.full_name})
                                        for f in row.problems]
    return {name: tuple(found) for name, found in problems.items() if found}


def answered_with_queues(nodes: Sequence[Node], view: CeleryView, broadcast: Sequence[str]) -> bool:
    """Whether every node answered ping and consumes its expected queues (the cheap check, no SSH)."""
    if view.error:
        return False
    for node in nodes:
        answer = view.queues.get(node.full_name)
        if node.full_name not in view.pings or answer is None:
            return False
        missing, extra = queue_drift(expected_queues(node, broadcast), consumed_queue_names(answer))
        if missing or extra:
            return False
    return True


# Steps (broker and SSH).

def _broker_errors() -> tuple[type[BaseException], ...]:
    from amqp.exceptions import AMQPError
    from kombu.exceptions import KombuError

    return (OSError, KombuError, AMQPError)


def drain(app: Any, nodes: Sequence[Node], broadcast: Sequence[str], timeout: float,
          progress: Drain | None = None, on_cancelled: Callable[[Drain], None] | None = None) -> Drain:
    """Stop nodes consuming, then wait (at most timeout s) until they hold no active or reserved task.

    ``progress`` is filled in as the drain goes, so an interrupted drain still tells what it cancelled.
    """
    state = progress if progress is not None else Drain()
    started = time.monotonic()
    names = [node.full_name for node in nodes]
    try:
        with app.connection_for_write() as conn:
            consumed = control.inspect(app, conn, names, "active_queues")
            plan = queues_to_cancel(nodes, consumed, broadcast)
            for queue, targets in plan.items():
                for node in targets:
                    state.planned.setdefault(node, []).append(queue)
            for queue, targets in plan.items():
                for node in control.consumer_command(app, conn, "cancel_consumer", queue, targets):
                    state.cancelled.setdefault(node, []).append(queue)
            if on_cancelled:
                on_cancelled(state)
            deadline = started + timeout
            while True:
                state.busy = count_tasks(control.inspect(app, conn, names, "active"),
                                         control.inspect(app, conn, names, "reserved"))
                if not any(state.busy.values()) or time.monotonic() >= deadline:
                    break
                time.sleep(POLL)
    except _broker_errors() as exc:
        state.silent, state.error = tuple(names), redact(f"broker failed while draining: {type(exc).__name__}: {exc}")
    else:
        state.silent = tuple(name for name in names if name not in consumed and name not in state.busy)
    state.seconds = time.monotonic() - started
    return state


def resume(app: Any, queues: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """Give nodes back queues a drain cancelled (``add_consumer``); node -> queues they confirmed."""
    resumed: dict[str, list[str]] = {}
    try:
        with app.connection_for_write() as conn:
            for queue, targets in _by_queue(queues).items():
                for node in control.consumer_command(app, conn, "add_consumer", queue, targets):
                    resumed.setdefault(node, []).append(queue)
    except Exception:  # noqa: BLE001 - best effort; the report says which nodes got nothing back
        pass
    return {node: tuple(found) for node, found in resumed.items()}


def restart_hosts(hosts: Sequence[Host], connect_timeout: float, timeout: float) -> dict[str, Step]:
    """``systemctl restart celery.service`` on every host at once; host -> Step."""
    started = time.monotonic()
    results = run_on_hosts(hosts, RESTART_COMMAND, connect_timeout=connect_timeout, timeout=timeout, become=True)
    elapsed = time.monotonic() - started
    steps = {}
    for host in hosts:
        result = results[host.name]
        if result.error is not None:
            code = "restart_timed_out" if result.timed_out else "ssh_failed"
            detail = f"{RESTART_COMMAND} {result.error}" if result.timed_out else result.error
            steps[host.name] = Step(False, code, detail, elapsed)
        elif result.exited != 0:
            text = (result.stderr.strip() or result.stdout.strip()).splitlines()
            steps[host.name] = Step(False, "restart_failed", f"{RESTART_COMMAND} exited {result.exited}: "
                                    f"{text[-1][:300] if text else 'no output'}", elapsed)
        else:
            steps[host.name] = Step(True, seconds=elapsed)
    return steps


def verify(fleet: Fleet, hosts: Sequence[Host], timeout: float, connect_timeout: float,
           inventory: str = "") -> Verdict:
    """Wait (at most timeout s) until the hosts' nodes answer with their queues, then judge them with a probe."""
    broker_url = fleet.require_broker_url(inventory)
    started = time.monotonic()
    deadline = started + timeout
    nodes = [node for host in hosts for node in host.nodes]
    names = [node.full_name for node in nodes]
    ping_timeout = 1.0
    while True:
        bound = connect_timeout + ping_timeout
        view = inspect_nodes(broker_url, names, ping_timeout, connect_timeout, time.monotonic() + bound)
        last_try = time.monotonic() >= deadline
        if answered_with_queues(nodes, view, fleet.broadcast_queues) or last_try:
            probes = probe_hosts(hosts, connect_timeout, time.monotonic() + bound)
            problems = judge(nodes, hosts, probes, view, fleet.broadcast_queues)
            if not problems or last_try:
                return Verdict(not problems, problems, time.monotonic() - started)
        time.sleep(POLL)


# The rolling restart: a few named steps per batch.

def _host_result(host: Host, number: int, drained: Drain, step: Step, verdict: Verdict,
                 resumed: Mapping[str, Sequence[str]] | None, drain_timeout: float) -> HostRestart:
    names = tuple(node.full_name for node in host.nodes)
    findings: list[Finding] = []
    if not step.ok:
        findings.append(Finding(HEALTH_FAIL, step.code, {"detail": step.detail}))
        if any(drained.cancelled.get(node) for node in names):
            findings.append(Finding(HEALTH_FAIL, "queues_given_back",
                                    {"nodes": [node for node in names if (resumed or {}).get(node)]}))
    findings += verdict.problems.get(host.name, ())
    ok = step.ok and host.name not in verdict.problems
    silent = [node for node in drained.silent if node in names]
    left = sum(drained.busy.get(node, 0) for node in names)
    if ok and silent:
        findings.append(Finding(HEALTH_OK, "not_drained", {"nodes": silent}))
    if ok and left:
        findings.append(Finding(HEALTH_OK, "tasks_left", {"tasks": left, "drain_timeout": drain_timeout}))
    return HostRestart(host=host.name, nodes=names, status=OK if ok else FAIL, findings=tuple(findings),
                       batch=number, queues_cancelled=sum(len(drained.cancelled.get(node, ())) for node in names),
                       tasks_left=left, drain_seconds=drained.seconds, restart_seconds=step.seconds,
                       verify_seconds=verdict.seconds)


def _skipped(plan: Sequence[tuple[Host, ...]], first: int) -> list[HostRestart]:
    return [HostRestart(host=host.name, nodes=tuple(n.full_name for n in host.nodes), status=SKIPPED,
                        findings=(Finding("SKIPPED", "not_reached", {}),), batch=number)
            for number, batch in enumerate(plan[first - 1:], first) for host in batch]


def _emit_per_host(emit: Listener, kind: str, number: int, batch: Sequence[Host],
                   data: Callable[[Host], Mapping[str, Any]]) -> None:
    for host in batch:
        emit(Event(kind, number, host.name, data(host)))


def _restart_batch(app: Any, fleet: Fleet, batch: tuple[Host, ...], number: int, emit: Listener,
                   timeouts: Mapping[str, float], drain_first: bool = True) -> list[HostRestart]:
    """Drain, restart and verify one batch; Ctrl-C during it gives the drained queues back first."""
    nodes = [node for host in batch for node in host.nodes]
    emit(Event("batch", number, None, {"hosts": [host.name for host in batch]}))
    drained = Drain()

    def host_nodes(host: Host) -> list[str]:
        return [node.full_name for node in host.nodes]

    def cancelled(state: Drain) -> None:
        _emit_per_host(emit, "draining", number, batch, lambda h: {
            "queues_cancelled": sum(len(state.cancelled.get(n, ())) for n in host_nodes(h))})

    try:
        if drain_first:
            drain(app, nodes, fleet.broadcast_queues, timeouts["drain"], drained, cancelled)
        _emit_per_host(emit, "drain", number, batch, lambda h: {
            "seconds": round(drained.seconds, 3), "tasks_left": sum(drained.busy.get(n, 0) for n in host_nodes(h)),
            "error": drained.error})
        if drained.error:
            steps = {host.name: Step(False, "broker_failed", drained.error) for host in batch}
        else:
            steps = restart_hosts(batch, timeouts["connect"], timeouts["restart"])
        _emit_per_host(emit, "restart", number, batch, lambda h: {
            "ok": steps[h.name].ok, "seconds": round(steps[h.name].seconds, 3), "detail": steps[h.name].detail})
        failed = {name for name, step in steps.items() if not step.ok}
        resumed = None
        if failed:
            resumed = resume(app, {n.full_name: drained.cancelled.get(n.full_name, ()) for n in nodes
                                   if n.host in failed})
            emit(Event("resume", number, None, {"nodes": {k: list(v) for k, v in resumed.items()}}))
            verdict = Verdict(False)
        else:
            verdict = verify(fleet, batch, timeouts["verify"], timeouts["connect"])
        _emit_per_host(emit, "verify", number, batch, lambda h: {
            "ok": h.name not in failed and h.name not in verdict.problems, "seconds": round(verdict.seconds, 3),
            "codes": [f.code for f in verdict.problems.get(h.name, ())]})
    except KeyboardInterrupt:
        planned = {node: queues for node, queues in drained.planned.items()}
        resumed = resume(app, planned) if planned else {}
        emit(Event("interrupted", number, None, {"nodes": {k: list(v) for k, v in resumed.items()},
                                                  "hosts": [host.name for host in batch]}))
        raise Interrupted(_interrupted_words(batch, planned, resumed)) from None
    return [_host_result(host, number, drained, steps[host.name], verdict, resumed, timeouts["drain"])
            for host in batch]


def _interrupted_words(batch: Sequence[Host], planned: Mapping[str, Sequence[str]],
                       resumed: Mapping[str, Sequence[str]]) -> str:
    hosts = ", ".join(host.name for host in batch)
    if not planned:
        return f"interrupted at {hosts} before any queue was cancelled"
    back = ", ".join(sorted(resumed)) or "no node (none answered)"
    return f"interrupted at {hosts}: drained queues given back to {back}"


def rolling_restart(fleet: Fleet, *, serial: int = DEFAULT_SERIAL, drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
                    restart_timeout: float = DEFAULT_RESTART_TIMEOUT, verify_timeout: float = DEFAULT_VERIFY_TIMEOUT,
                    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, inventory: str = "",
                    on_event: Listener | None = None, drain_first: bool = True) -> Outcome:
    """Restart the fleet's worker hosts serial at a time; stop at the first batch that is not healthy after.

    drain_first off: hosts whose nodes do not run yet (a first release) are started without asking them first.
    """
    emit = on_event or (lambda event: None)
    broker_url = fleet.require_broker_url(inventory)
    timeouts = {"drain": drain_timeout, "restart": restart_timeout, "verify": verify_timeout,
                "connect": connect_timeout}
    started = time.monotonic()
    app = control.control_app(broker_url, connect_timeout, "fleet-restart")
    control.check_broker(app, connect_timeout)
    done: list[HostRestart] = []
    plan = batches(fleet.workers, serial)
    for number, batch in enumerate(plan, 1):
        done += _restart_batch(app, fleet, batch, number, emit, timeouts, drain_first)
        if any(host.status == FAIL for host in done):
            done += _skipped(plan, number + 1)
            break
    return Outcome(inventory=inventory, serial=serial, hosts=tuple(done), elapsed=time.monotonic() - started)
