"""Rolling restart of the fleet's Celery workers, SERIAL hosts at a time: drain, wait, restart, verify.

Usage: .venv/bin/python scripts/restart.py [--inventory PATH] [--serial N] [--drain-timeout S]
       [--restart-timeout S] [--verify-timeout S] [--connect-timeout S] [--format text|json]
       (make restart [INVENTORY=path] [SERIAL=1] [FORMAT=json])

For each batch of SERIAL worker hosts (group celery_workers, inventory order), from the controller:

1. Drain: every node of the batch stops consuming. ``cancel_consumer`` for each queue it consumes
   (names from ``inspect active_queues``: its inventory queues, its own broadcast queue
   ``<broadcast>.<node>`` and anything added at runtime; the inventory's names when it does not answer).
   Messages it had reserved but not started stay unacknowledged and go back to their queue when it stops.
2. Wait until the batch's nodes have no active and no reserved task (``inspect active`` / ``reserved``),
   at most DRAIN_TIMEOUT seconds. Then restart anyway: the warm shutdown of ``systemctl restart celery``
   still lets running tasks finish, bounded by the units' TimeoutStopSec (the task time limit + margin).
3. ``systemctl restart celery`` on the batch's hosts (Fabric ``ThreadingGroup``, explicit connect timeouts,
   at most RESTART_TIMEOUT seconds); celery.service restarts every ``celery@<node>`` instance of the host.
4. Verify, at most VERIFY_TIMEOUT seconds, with scripts/health.py's checks: every node of the batch answers
   ping and consumes its inventory queues plus the broadcast queues, celery.service is active, and each
   node runs exactly once on its host.

The first batch that does not come back healthy stops the run (exit 1): its hosts are reported with the
reasons, later hosts are left alone. When the restart command itself fails (SSH, systemctl), the batch's
drained nodes that still answer get their queues back (``add_consumer``), so a failed attempt does not
leave a host idle. Nothing here needs the broker to be idle: other hosts keep consuming meanwhile.

Exit status: 0 every worker host restarted and healthy; 1 stopped at a host that did not come back
healthy; 2 usage error (bad option, inventory missing or unreadable, no broker URL); 3 broker
unreachable before anything was restarted.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (str(REPO_ROOT), str(Path(__file__).resolve().parent)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import fleet as fleet_model  # noqa: E402
import health  # noqa: E402

EXIT_OK, EXIT_STOPPED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
OK, FAIL, SKIPPED = "OK", "FAIL", "SKIPPED"
DEFAULT_SERIAL = 1
DEFAULT_DRAIN_TIMEOUT = 60.0
DEFAULT_RESTART_TIMEOUT = 900.0  # above the units' TimeoutStopSec (task time limit + margin) + start
DEFAULT_VERIFY_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = health.DEFAULT_CONNECT_TIMEOUT
CONTROL_TIMEOUT = 2.0  # seconds a control/inspect call waits for the nodes' replies
POLL = 0.5  # seconds between two checks while draining or verifying
RESTART_COMMAND = "systemctl restart celery.service"


class UnavailableError(Exception):
    """The broker cannot be reached: nothing was restarted."""


@dataclass(frozen=True)
class Drain:
    """What draining a batch's nodes did: queues cancelled per node, tasks still running when it ended."""

    cancelled: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    busy: Mapping[str, int] = field(default_factory=dict)  # node -> active + reserved tasks left
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
    detail: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Verdict:
    """Health of a batch after its restart: the rows of scripts/health.py that are not OK, and the wait."""

    healthy: bool
    problems: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # host -> reasons
    seconds: float = 0.0


@dataclass(frozen=True)
class HostRestart:
    """One worker host of the rolling restart."""

    host: str
    nodes: tuple[str, ...]
    status: str  # OK, FAIL, SKIPPED (not reached: an earlier batch failed)
    reasons: tuple[str, ...] = ()
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

def batches(hosts: Sequence[fleet_model.Host], serial: int) -> list[tuple[fleet_model.Host, ...]]:
    """hosts in groups of serial, in order."""
    if serial < 1:
        raise ValueError(f"serial must be >= 1, not {serial}")
    return [tuple(hosts[i:i + serial]) for i in range(0, len(hosts), serial)]


def inventory_queue_names(node: fleet_model.Node, broadcast: Sequence[str]) -> tuple[str, ...]:
    """The AMQP queue names node consumes per the inventory: its queues, then its own broadcast queues."""
    from celery_app.broadcast import broadcast_queue

    return (*node.queues, *(broadcast_queue(name, node.full_name).name for name in broadcast))


def queues_to_cancel(nodes: Sequence[fleet_model.Node], answers: Mapping[str, Any],
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


def judge(nodes: Sequence[fleet_model.Node], hosts: Sequence[fleet_model.Host], probes: Mapping[str, Any],
          view: health.CeleryView, broadcast: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """host -> reasons it is not healthy after a restart (empty: healthy), from scripts/health.py's rows.

    Healthy: celery.service active, every node answers ping, consumes exactly its queues, runs once.
    Host metrics (load, memory, disk) and beat are not what a restart changes: not judged here.
    """
    processes: dict[str, list[tuple[str, int]]] = {}
    for name, probe in probes.items():
        for proc in (probe.data or {}).get("workers") or []:
            processes.setdefault(proc["node"], []).append((name, proc["pid"]))
    problems: dict[str, list[str]] = {host.name: [] for host in hosts}
    for host in hosts:
        probe = probes.get(host.name) or health.Probe(host.name, error="not probed", down=True)
        if probe.down or probe.data is None:
            problems[host.name].append(f"probe failed: {probe.error}")
        else:
            unit = ((probe.data.get("units") or {}).get(health.WORKER_UNIT) or {})
            if unit.get("active") != "active":
                problems[host.name].append(f"{health.WORKER_UNIT} {unit.get('active') or 'unknown'}"
                                           + (f" ({unit['sub']})" if unit.get("sub") else ""))
        for node in (n for n in nodes if n.host == host.name):
            row = health.node_row(node, probe, view, broadcast, processes)
            if row.status != health.OK:
                problems[host.name] += [f"{node.full_name}: {reason}" for reason in row.reasons]
    return {name: tuple(reasons) for name, reasons in problems.items() if reasons}


def _answered_with_queues(nodes: Sequence[fleet_model.Node], view: health.CeleryView,
                          broadcast: Sequence[str]) -> bool:
    """Whether every node answered ping and consumes its expected queues (the cheap check, no SSH)."""
    if view.error:
        return False
    for node in nodes:
        answer = view.queues.get(node.full_name)
        if node.full_name not in view.pings or answer is None:
            return False
        missing, extra = health.queue_drift(health.expected_queues(node, broadcast),
                                            health.consumed_queue_names(answer))
        if missing or extra:
            return False
    return True


# Steps (broker and SSH).

def control_app(broker_url: str, connect_timeout: float) -> Any:
    """A Celery app for control commands on the fleet's broker (no retries: an answer, not a wait)."""
    from celery import Celery

    app = Celery("fleet-restart", broker=broker_url, set_as_current=False)
    app.conf.update(broker_connection_timeout=connect_timeout, broker_connection_retry=False,
                    broker_connection_max_retries=1, accept_content=["json"])
    return app


def check_broker(app: Any, connect_timeout: float) -> None:
    """Raise UnavailableError unless the broker accepts a connection."""
    from amqp.exceptions import AMQPError
    from kombu.exceptions import KombuError

    try:
        with app.connection_for_write(connect_timeout=connect_timeout) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, interval_max=0)
    except (OSError, KombuError, AMQPError) as exc:
        raise UnavailableError(fleet_model.redact(f"broker unreachable: {type(exc).__name__}: {exc}")) from None


def drain(app: Any, nodes: Sequence[fleet_model.Node], broadcast: Sequence[str], timeout: float) -> Drain:
    """Stop nodes consuming, then wait (at most timeout s) until they hold no active or reserved task."""
    from amqp.exceptions import AMQPError
    from kombu.exceptions import KombuError

    started = time.monotonic()
    names = [node.full_name for node in nodes]
    try:
        return _drain(app, nodes, names, broadcast, started + timeout, started)
    except (OSError, KombuError, AMQPError) as exc:
        return Drain(silent=tuple(names), seconds=time.monotonic() - started,
                     error=fleet_model.redact(f"broker failed while draining: {type(exc).__name__}: {exc}"))


def _drain(app: Any, nodes: Sequence[fleet_model.Node], names: Sequence[str], broadcast: Sequence[str],
           deadline: float, started: float) -> Drain:
    with app.connection_for_write() as conn:
        def inspect(method: str) -> dict[str, Any]:
            inspector = app.control.inspect(destination=names, timeout=CONTROL_TIMEOUT, limit=len(names),
                                            connection=conn)
            return getattr(inspector, method)() or {}

        consumed = inspect("active_queues")
        cancelled: dict[str, list[str]] = {name: [] for name in names}
        for queue, targets in queues_to_cancel(nodes, consumed, broadcast).items():
            replies = app.control.cancel_consumer(queue, destination=targets, reply=True, timeout=CONTROL_TIMEOUT,
                                                  limit=len(targets), connection=conn) or []
            for reply in replies:
                for node, answer in reply.items():
                    if node in cancelled and "ok" in (answer or {}):
                        cancelled[node].append(queue)
        while True:
            busy = count_tasks(inspect("active"), inspect("reserved"))
            if not any(busy.values()) or time.monotonic() >= deadline:
                break
            time.sleep(POLL)
    silent = tuple(name for name in names if name not in consumed and name not in busy)
    return Drain(cancelled={k: tuple(v) for k, v in cancelled.items()}, busy=busy, silent=silent,
                 seconds=time.monotonic() - started)


def resume(app: Any, cancelled: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """Give nodes back the queues a drain cancelled (after a failed restart); node -> queues resumed."""
    resumed: dict[str, list[str]] = {}
    by_queue: dict[str, list[str]] = {}
    for node, queues in cancelled.items():
        for queue in queues:
            by_queue.setdefault(queue, []).append(node)
    try:
        with app.connection_for_write() as conn:
            for queue, targets in by_queue.items():
                for reply in app.control.add_consumer(queue, destination=targets, reply=True, timeout=CONTROL_TIMEOUT,
                                                      limit=len(targets), connection=conn) or []:
                    for node, answer in reply.items():
                        if "ok" in (answer or {}):
                            resumed.setdefault(node, []).append(queue)
    except Exception:  # noqa: BLE001 - best effort; the report says which nodes got nothing back
        pass
    return {node: tuple(queues) for node, queues in resumed.items()}


def restart_hosts(hosts: Sequence[fleet_model.Host], connect_timeout: float, timeout: float) -> dict[str, Step]:
    """``systemctl restart celery.service`` on every host at once; host -> Step."""
    from fabric import ThreadingGroup
    from fabric.exceptions import GroupException

    connections = health.ssh_connections(hosts, connect_timeout)
    group = ThreadingGroup.from_connections(connections)
    started = time.monotonic()
    try:
        results = group.run(RESTART_COMMAND, hide=True, warn=True, in_stream=False, timeout=math.ceil(timeout))
    except GroupException as exc:
        results = exc.result
    finally:
        group.close()
    elapsed = time.monotonic() - started
    steps = {}
    for host, cxn in zip(hosts, connections):
        result = results.get(cxn)
        if isinstance(result, BaseException):
            words = health.describe_ssh_error(result, connect_timeout)
            from invoke.exceptions import CommandTimedOut

            if isinstance(result, CommandTimedOut):
                words = f"{RESTART_COMMAND} did not finish within {result.timeout:g} s"
            steps[host.name] = Step(False, words, elapsed)
        elif result is None:
            steps[host.name] = Step(False, "no result", elapsed)
        elif result.exited != 0:
            text = (result.stderr.strip() or result.stdout.strip()).splitlines()
            steps[host.name] = Step(False, f"{RESTART_COMMAND} exited {result.exited}: "
                                           f"{text[-1][:300] if text else 'no output'}", elapsed)
        else:
            steps[host.name] = Step(True, "", elapsed)
    return steps


def verify(fleet: fleet_model.Fleet, hosts: Sequence[fleet_model.Host], timeout: float,
           connect_timeout: float) -> Verdict:
    """Wait (at most timeout s) until the hosts' nodes answer with their queues, then judge them with a probe."""
    started = time.monotonic()
    deadline = started + timeout
    nodes = [node for host in hosts for node in host.nodes]
    names = [node.full_name for node in nodes]
    ping_timeout = 1.0
    while True:
        bound = connect_timeout + ping_timeout
        view = health.inspect_nodes(fleet.broker_url, names, ping_timeout, connect_timeout,
                                    time.monotonic() + bound)
        last_try = time.monotonic() >= deadline
        if _answered_with_queues(nodes, view, fleet.broadcast_queues) or last_try:
            probes = health.probe_hosts(hosts, connect_timeout, time.monotonic() + bound, bound)
            problems = judge(nodes, hosts, probes, view, fleet.broadcast_queues)
            if not problems or last_try:
                return Verdict(not problems, problems, time.monotonic() - started)
        time.sleep(POLL)


def rolling_restart(fleet: fleet_model.Fleet, *, serial: int = DEFAULT_SERIAL,
                    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT, restart_timeout: float = DEFAULT_RESTART_TIMEOUT,
                    verify_timeout: float = DEFAULT_VERIFY_TIMEOUT, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                    inventory: str = "") -> Outcome:
    """Restart the fleet's worker hosts serial at a time; stop at the first batch that is not healthy after."""
    if not fleet.broker_url:
        raise health.UsageError(f"{inventory or 'inventory'}: no broker URL (no rabbitmq host, or no "
                                f"{fleet_model.secrets_dir(inventory or '.')}/{fleet_model.PASSWORD_FILE}: deploy "
                                "first; CELERY_BROKER_URL overrides)")
    started = time.monotonic()
    app = control_app(fleet.broker_url, connect_timeout)
    check_broker(app, connect_timeout)
    done: list[HostRestart] = []
    plan = batches(fleet.workers, serial)
    for number, batch in enumerate(plan, 1):
        nodes = [node for host in batch for node in host.nodes]
        drained = drain(app, nodes, fleet.broadcast_queues, drain_timeout)
        if drained.error:
            steps = {host.name: Step(False, drained.error) for host in batch}
        else:
            steps = restart_hosts(batch, connect_timeout, restart_timeout)
        failed = {name: step for name, step in steps.items() if not step.ok}
        resumed: dict[str, tuple[str, ...]] = {}
        if failed:
            resumed = resume(app, {node.full_name: drained.cancelled.get(node.full_name, ())
                                   for node in nodes if node.host in failed})
            verdict = Verdict(False)
        else:
            verdict = verify(fleet, batch, verify_timeout, connect_timeout)
        for host in batch:
            host_nodes = [node.full_name for node in host.nodes]
            reasons: list[str] = []
            if host.name in failed:
                reasons.append(failed[host.name].detail)
                if any(drained.cancelled.get(node) for node in host_nodes):
                    back = [node for node in host_nodes if resumed.get(node)]
                    reasons.append(f"drained queues given back to {', '.join(back)}" if back
                                   else "drained queues given back to no node (none answered)")
            reasons += verdict.problems.get(host.name, ())
            silent = [node for node in drained.silent if node in host_nodes]
            left = sum(drained.busy.get(node, 0) for node in host_nodes)
            notes = ([f"not drained (no answer): {', '.join(silent)}"] if silent else [])
            notes += ([f"{left} task(s) still running after the {drain_timeout:g} s drain: left to the warm "
                       "shutdown"] if left else [])
            ok = host.name not in failed and host.name not in verdict.problems
            done.append(HostRestart(
                host=host.name, nodes=tuple(host_nodes), status=OK if ok else FAIL,
                reasons=tuple(reasons) if not ok else tuple(notes), batch=number,
                queues_cancelled=sum(len(drained.cancelled.get(node, ())) for node in host_nodes),
                tasks_left=left, drain_seconds=drained.seconds,
                restart_seconds=steps[host.name].seconds, verify_seconds=verdict.seconds,
            ))
        if any(host.status == FAIL for host in done):
            for later_number, later in enumerate(plan[number:], number + 1):
                done += [HostRestart(host=host.name, nodes=tuple(n.full_name for n in host.nodes), status=SKIPPED,
                                     reasons=("not restarted: an earlier host did not come back healthy",),
                                     batch=later_number) for host in later]
            break
    return Outcome(inventory=inventory, serial=serial, hosts=tuple(done), elapsed=time.monotonic() - started)


# Presenters.

def render_text(outcome: Outcome) -> str:
    """One line per host (drain, restart and verify times, then why when not OK), then a verdict line."""
    width = max([len("HOST"), *(len(host.host) for host in outcome.hosts)])
    lines = [f"{'HOST':<{width}}  STATUS   DRAIN    RESTART  VERIFY   DETAIL"]
    for host in outcome.hosts:
        if host.status == SKIPPED:
            times = f"{'-':<7}  {'-':<7}  {'-':<7}"
        else:
            times = f"{host.drain_seconds:>5.1f} s  {host.restart_seconds:>5.1f} s  {host.verify_seconds:>5.1f} s"
        detail = "; ".join(host.reasons) or f"{len(host.nodes)} node(s) back: {', '.join(host.nodes)}"
        lines.append(f"{host.host:<{width}}  {host.status:<7}  {times}  {detail}".rstrip())
    restarted = sum(host.status == OK for host in outcome.hosts)
    if outcome.ok:
        lines.append(f"RESTARTED: {restarted} host(s), {outcome.serial} at a time, in {outcome.elapsed:.1f} s")
    else:
        lines.append(f"STOPPED at {', '.join(outcome.stopped_at)}: {restarted} of {len(outcome.hosts)} host(s) "
                     f"restarted and healthy, {outcome.elapsed:.1f} s")
    return "\n".join(lines)


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    """The outcome as JSON-ready data."""
    return {
        "inventory": outcome.inventory, "serial": outcome.serial, "ok": outcome.ok,
        "stopped_at": list(outcome.stopped_at), "elapsed": round(outcome.elapsed, 3),
        "hosts": [{**asdict(host), "nodes": list(host.nodes), "reasons": list(host.reasons),
                   **{key: round(getattr(host, key), 3) for key in ("drain_seconds", "restart_seconds",
                                                                    "verify_seconds")}}
                  for host in outcome.hosts],
    }


# Command line.

def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _serial(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of hosts >= 1, not {text!r}")
    return int(text)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inventory", default=str(health.DEFAULT_INVENTORY), help="Ansible inventory")
    parser.add_argument("--serial", type=_serial, default=DEFAULT_SERIAL, help="hosts restarted at a time")
    parser.add_argument("--drain-timeout", type=_positive, default=DEFAULT_DRAIN_TIMEOUT,
                        help="seconds to wait for a host's running and reserved tasks before restarting anyway")
    parser.add_argument("--restart-timeout", type=_positive, default=DEFAULT_RESTART_TIMEOUT,
                        help="seconds `systemctl restart celery` may take on a host")
    parser.add_argument("--verify-timeout", type=_positive, default=DEFAULT_VERIFY_TIMEOUT,
                        help="seconds for a restarted host's nodes to answer with their queues")
    parser.add_argument("--connect-timeout", type=_positive, default=DEFAULT_CONNECT_TIMEOUT,
                        help="seconds to reach a host over SSH (and the broker)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        fleet = fleet_model.load_fleet(options.inventory)
        outcome = rolling_restart(fleet, serial=options.serial, drain_timeout=options.drain_timeout,
                                  restart_timeout=options.restart_timeout, verify_timeout=options.verify_timeout,
                                  connect_timeout=options.connect_timeout, inventory=options.inventory)
    except (fleet_model.FleetError, health.UsageError) as exc:
        print(f"error: {fleet_model.redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except UnavailableError as exc:
        print(f"error: {exc}; nothing was restarted", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if options.format == "json":
        print(json.dumps(outcome_json(outcome), indent=2))
    else:
        print(render_text(outcome))
    return EXIT_OK if outcome.ok else EXIT_STOPPED


if __name__ == "__main__":
    sys.exit(main())
