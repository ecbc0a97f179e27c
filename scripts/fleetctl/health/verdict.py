"""The pure checks: a fleet's probes and node answers judged against its inventory, as rows of findings."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

from fleetctl.health.model import (
    BEAT_UNIT,
    BROKER_UNIT,
    DEFAULT_BEAT_PERIOD,
    DOWN,
    FAIL,
    HOST,
    NODE,
    OK,
    QUEUE,
    WARN,
    WORKER_UNIT,
    CeleryView,
    Finding,
    Probe,
    Row,
    Thresholds,
    worst,
)
from fleetctl.inventory import Fleet, Host, Node
from fleetctl.remote.broker_metrics import QueueMetrics


def grade(value: float | None, warn: float, fail: float) -> str:
    """OK, WARN (value >= warn) or FAIL (value >= fail); OK when value is unknown."""
    if value is None or value < warn:
        return OK
    return FAIL if value >= fail else WARN


def consumed_queue_names(queues: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """Logical names of the queues in an active_queues answer (a broadcast queue ``B.<node>`` is ``B``)."""
    names = []
    for queue in queues:
        exchange = queue.get("exchange") or {}
        if queue.get("alias"):
            name = queue["alias"]
        elif exchange.get("type") == "fanout" and exchange.get("name"):
            name = exchange["name"]
        else:
            name = queue.get("name")
        if name and name not in names:
            names.append(name)
    return tuple(names)


def expected_queues(node: Node, broadcast: Sequence[str]) -> tuple[str, ...]:
    """The queues a node must consume: its own, then the broadcast queues."""
    return tuple(dict.fromkeys([*node.queues, *broadcast]))


def declared_options(queue: Mapping[str, Any]) -> dict[str, Any]:
    """The options of a queue in an active_queues answer, with the keys of an inventory queue entry."""
    exchange = queue.get("exchange") or {}
    found = {"exchange": exchange.get("name"), "exchange_type": exchange.get("type"),
             "routing_key": queue.get("routing_key")}
    priority = (queue.get("queue_arguments") or {}).get("x-max-priority")
    return {**found, "max_priority": priority} if priority is not None else found


def options_drift(name: str, wanted: Mapping[str, Any], declared: Mapping[str, Any]) -> dict[str, Any]:
    """key -> (wanted, declared) where a node declares a queue otherwise than its inventory entry."""
    full = {"exchange": name, "exchange_type": "direct", "routing_key": name, "max_priority": None, **wanted}
    return {key: [full[key], declared.get(key)] for key in sorted(full) if full[key] != declared.get(key)}


def options_label(options: Mapping[str, Any]) -> str:
    """Queue options in a few words: ``max_priority 10``, ``topic feeds, feed.#``."""
    words = []
    if options.get("exchange_type") not in (None, "direct") or options.get("exchange"):
        words.append(" ".join(str(options[k]) for k in ("exchange_type", "exchange") if options.get(k)))
    if options.get("routing_key"):
        words.append(str(options["routing_key"]))
    if options.get("max_priority") is not None:
        words.append(f"max_priority {options['max_priority']}")
    return ", ".join(words)


def queue_drift(expected: Iterable[str], consumed: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(missing, extra) queue names, each sorted."""
    expected, consumed = set(expected), set(consumed)
    return tuple(sorted(expected - consumed)), tuple(sorted(consumed - expected))


def beat_period(schedule: Mapping[str, Any] | None, entry: str = "heartbeat") -> float:
    """Seconds between two runs of a beat_schedule entry (DEFAULT_BEAT_PERIOD when it has none)."""
    every = ((schedule or {}).get(entry) or {}).get("schedule")
    every = getattr(every, "run_every", every)  # celery.schedules.schedule
    if isinstance(every, timedelta):
        return every.total_seconds()
    if isinstance(every, (int, float)) and not isinstance(every, bool) and every > 0:
        return float(every)
    return DEFAULT_BEAT_PERIOD


def heartbeat_verdict(age: float | None, beat_up_for: float | None, period: float, periods: float) -> Finding:
    """The finding on the newest heartbeat age given how long beat has been up (seconds)."""
    limit = period * periods
    starting = beat_up_for is not None and beat_up_for < limit
    params = {"age": age, "beat_up_for": beat_up_for, "limit": limit}
    if age is None:
        return Finding(WARN, "heartbeat_not_yet", params) if starting else Finding(FAIL, "heartbeat_missing", params)
    if age <= limit:
        return Finding(OK, "heartbeat", params)
    return Finding(WARN, "heartbeat_late_starting", params) if starting else Finding(FAIL, "heartbeat_stale", params)


def unit_state(data: Mapping[str, Any], unit: str) -> dict[str, Any]:
    """A unit's state in a probe: unit, installed, active, sub."""
    state = (data.get("units") or {}).get(unit) or {}
    return {"unit": unit, "installed": state.get("load") != "not-found", "active": state.get("active") or "unknown",
            "sub": state.get("sub")}


def worker_processes(probes: Mapping[str, Probe]) -> dict[str, list[tuple[str, int]]]:
    """Node name -> [(host, pid)] of every worker main process the probes saw."""
    found: dict[str, list[tuple[str, int]]] = {}
    for host, probe in probes.items():
        for proc in (probe.data or {}).get("workers") or []:
            found.setdefault(proc["node"], []).append((host, proc["pid"]))
    return found


def newest_heartbeat(fleet: Fleet, probes: Mapping[str, Probe]) -> float | None:
    """Age in seconds of the newest heartbeat file on the worker hosts (None: none found)."""
    ages = [((probes[h.name].data or {}).get("heartbeat") or {}).get("age") for h in fleet.workers if h.name in probes]
    ages = [age for age in ages if isinstance(age, (int, float))]
    return min(ages) if ages else None


# Host checks: each returns the findings of one concern.

def _unit_findings(host: Host, data: Mapping[str, Any], beat_host: str | None) -> list[Finding]:
    needed = [unit for unit, role in ((BROKER_UNIT, host.is_broker), (WORKER_UNIT, host.is_worker),
                                      (BEAT_UNIT, host.is_beat)) if role]
    states = [unit_state(data, unit) for unit in needed]
    findings = [Finding(FAIL, "unit_not_active", state) for state in states if state["active"] != "active"]
    active = [state["unit"] for state in states if state["active"] == "active" and state["installed"]]
    if active:
        findings.insert(0, Finding(OK, "units_active", {"units": active}))
    if not host.is_beat and unit_state(data, BEAT_UNIT)["active"] == "active":
        findings.append(Finding(FAIL, "beat_elsewhere", {"unit": BEAT_UNIT, "beat_host": beat_host}))
    return findings


def host_metrics(data: Mapping[str, Any]) -> dict[str, Any]:
    """The host metrics of a probe: load per CPU, memory %, disk % per path."""
    return {"load": data.get("load_per_cpu"), "memory": data.get("memory_percent"),
            "disk": dict(data.get("disk_percent") or {})}


def _metric_findings(metrics: Mapping[str, Any], thresholds: Thresholds) -> list[Finding]:
    graded = [(name, None, metrics.get(name)) for name in ("load", "memory")]
    graded += [("disk", path, value) for path, value in (metrics.get("disk") or {}).items()]
    findings = [Finding(OK, "metrics", {"metrics": dict(metrics)})]
    for metric, path, value in graded:
        warn, fail = getattr(thresholds, metric)
        status = grade(value, warn, fail)
        if status != OK:
            limit = fail if status == FAIL else warn
            findings.append(Finding(status, "metric_over", {"metric": metric, "path": path, "value": value,
                                                            "limit": limit}))
    return findings


def result_backend_findings(backend: Mapping[str, Any] | None, redis_host: str | None,
                            thresholds: Thresholds) -> list[Finding]:
    """Findings on the Redis result backend as one worker host sees it (none for rpc://)."""
    if not backend:
        return []
    params = {"redis_host": redis_host or backend.get("host"), "address": backend.get("host"),
              "port": backend.get("port"), "error": backend.get("error")}
    if not backend.get("reachable"):
        return [Finding(FAIL, "result_backend_unreachable", params)]
    if not backend.get("authenticated"):
        return [Finding(FAIL, "result_backend_refused", params)]
    used, limit = backend.get("used_memory"), backend.get("maxmemory")
    percent = round(100.0 * used / limit, 1) if used is not None and limit else None
    params = {**params, "used_memory": used, "maxmemory": limit, "percent": percent}
    status = grade(percent, *thresholds.memory)
    return [Finding(status, "result_backend" if status == OK else "result_backend_memory", params)]


def fleet_releases(fleet: Fleet, probes: Mapping[str, Probe]) -> dict[str, str]:
    """Worker host -> the release it runs (hosts of the bundled app, or not probed, left out)."""
    return {host.name: str(probes[host.name].data["release"]) for host in fleet.workers
            if host.name in probes and (probes[host.name].data or {}).get("release")}


def release_findings(host: Host, releases: Mapping[str, str], rolling: bool = False) -> list[Finding]:
    """The host's release (a fact), and WARN release_drift when worker hosts run different releases
    and no rollout is running (rolling: one is, so hosts on two releases are expected)."""
    if host.name not in releases:
        return []
    mine = releases[host.name]
    others = {name: release for name, release in releases.items() if release != mine}
    if others and not rolling:
        return [Finding(WARN, "release_drift", {"release": mine, "others": dict(sorted(others.items()))})]
    return [Finding(OK, "release", {"release": mine})]


def host_row(host: Host, probe: Probe, fleet: Fleet, view: CeleryView, thresholds: Thresholds,
             heartbeat: Finding | None, releases: Mapping[str, str] | None = None, rolling: bool = False) -> Row:
    """The verdict on one host: reachable, its role's units active, beat and heartbeat, metrics."""
    if probe.down:
        return Row(HOST, host.name, host.name, DOWN, (Finding(DOWN, "host_unreachable", {"error": probe.error}),))
    findings = []
    if host.is_broker and view.error:
        findings.append(Finding(FAIL, "broker_unreachable", {"error": view.error}))
    if probe.error or probe.data is None:
        findings.append(Finding(FAIL, "probe_failed", {"error": probe.error}))
        return Row(HOST, host.name, host.name, FAIL, tuple(findings))
    findings += _unit_findings(host, probe.data, fleet.beat_host)
    if host.is_beat and heartbeat is not None:
        findings.append(heartbeat)
    if host.nodes:
        findings += result_backend_findings(probe.data.get("result_backend"), fleet.redis_host, thresholds)
    findings += release_findings(host, releases or {}, rolling)
    metrics = host_metrics(probe.data)
    findings += _metric_findings(metrics, thresholds)
    return Row(HOST, host.name, host.name, worst(f.status for f in findings), _facts_last(findings), metrics)


def _facts_last(findings: list[Finding]) -> tuple[Finding, ...]:
    """Findings with problems in the order found, the metrics fact last among the facts."""
    return tuple(sorted(findings, key=lambda f: f.code == "metrics"))


# Node checks.

def _silent_node(node: Node, probe: Probe, view: CeleryView, here: list[int]) -> Finding:
    if probe.down:
        return Finding(DOWN, "node_silent_host_down", {})
    params: dict[str, Any] = {"timeout": view.timeout, "pids": here}
    if probe.data is not None and not here:
        params["stale_pidfiles"] = [p["path"] for p in probe.data.get("pidfiles") or []
                                    if p.get("name") == node.name and not p.get("alive")]
        params["process"] = False
    elif here:
        params["process"] = True
    return Finding(FAIL, "node_silent", params)


def _queue_findings(node: Node, view: CeleryView, broadcast: Sequence[str]) -> list[Finding]:
    answer = view.queues.get(node.full_name)
    if answer is None:
        return [Finding(WARN, "queues_unanswered", {"timeout": view.timeout})]
    consumed = consumed_queue_names(answer)
    expected = expected_queues(node, broadcast)
    missing, extra = queue_drift(expected, consumed)
    shown = [q for q in expected if q in consumed] + list(extra)  # inventory order, not consumer order
    wanted = {queue: dict(options) for queue, options in node.queue_options}
    declared = {q.get("name"): declared_options(q) for q in answer if q.get("name") in wanted}
    labels = {queue: options_label(wanted[queue]) for queue in shown if queue in declared}
    findings = [Finding(OK, "queues", {"queues": shown, **({"options": labels} if labels else {})})]
    if missing or extra:
        findings.insert(0, Finding(FAIL, "queue_drift", {"missing": list(missing), "extra": list(extra)}))
    for queue in sorted(declared):
        differs = options_drift(queue, wanted[queue], declared[queue])
        if differs:
            findings.insert(0, Finding(FAIL, "queue_options_drift", {"queue": queue, "differs": differs}))
    return findings


def node_row(node: Node, probe: Probe, view: CeleryView, broadcast: Sequence[str],
             processes: Mapping[str, list[tuple[str, int]]]) -> Row:
    """The verdict on one inventory node: answers ping, consumes its queues, runs once."""
    name = node.full_name
    running = processes.get(name, [])
    here = [pid for host, pid in running if host == node.host]
    if view.error:
        findings = [Finding(FAIL, "node_unchecked", {"error": view.error})]
    elif name not in view.pings:
        findings = [_silent_node(node, probe, view, here)]
    else:
        findings = [Finding(OK, "pong", {}), *_queue_findings(node, view, broadcast)]
    if len(running) > 1:
        findings.append(Finding(FAIL, "node_duplicate", {"node": name, "processes": [list(p) for p in running]}))
    elif here:
        findings.append(Finding(OK, "pid", {"pid": here[0]}))
    return Row(NODE, name, node.host, worst(f.status for f in findings), tuple(findings))


def unexpected_rows(host: Host, probe: Probe, fleet: Fleet) -> list[Row]:
    """A row per node running on host that the inventory does not put there."""
    expected = {node.full_name for node in host.nodes}
    elsewhere = {node.full_name: node.host for node in fleet.nodes}
    pids: dict[str, list[int]] = {}
    for proc in (probe.data or {}).get("workers") or []:
        if proc["node"] not in expected:
            pids.setdefault(proc["node"], []).append(proc["pid"])
    return [Row(NODE, name, host.name, FAIL, (Finding(FAIL, "node_unexpected", {"owner": elsewhere.get(name),
                                                                                "pids": found}),))
            for name, found in pids.items()]


def checked_hosts(fleet: Fleet) -> tuple[Host, ...]:
    """The hosts with a fleet role (hosts in no role group are left alone)."""
    return tuple(h for h in fleet.hosts if (h.is_worker or h.is_beat or h.is_broker) and fleet.in_scope(h))


def fleet_heartbeat(fleet: Fleet, probes: Mapping[str, Probe], thresholds: Thresholds,
                    period: float) -> Finding | None:
    """The heartbeat finding of the fleet (None without a beat host)."""
    beat = fleet.beat
    if beat is None:
        return None
    beat_data = probes.get(beat.name, Probe(beat.name)).data or {}
    beat_up_for = ((beat_data.get("units") or {}).get(BEAT_UNIT) or {}).get("active_for")
    return heartbeat_verdict(newest_heartbeat(fleet, probes), beat_up_for, period, thresholds.heartbeat_periods)


def fleet_queues(fleet: Fleet) -> tuple[str, ...]:
    """The task queues the inventory's nodes consume (in scope), in inventory order; broadcast ones left out."""
    return tuple(dict.fromkeys(queue for node in fleet.nodes for queue in node.queues))


def queue_row(name: str, view: CeleryView, thresholds: Thresholds, unacked: Mapping[str, int] | None = None,
              replicas: Sequence[Finding] = ()) -> Row:
    """The verdict on one inventory queue as the broker holds it: its backlog, and whether anyone consumes it
    (unacked: messages delivered and not yet acknowledged, per queue, where the broker's metrics tell; replicas:
    quorum_findings)."""
    if name not in (view.depths or {}):
        return Row(QUEUE, name, "", WARN, (Finding(WARN, "queue_unanswered", {"timeout": view.timeout}),))
    depth = view.depths[name]
    if depth is None:
        return Row(QUEUE, name, "", WARN, (Finding(WARN, "queue_undeclared", {}),))
    ready, consumers = depth["ready"], depth["consumers"]
    counts = {"ready": ready, **({"unacked": unacked[name]} if name in (unacked or {}) else {}), "consumers": consumers}
    findings = [Finding(OK, "queue_depth", counts)]
    status = grade(ready, *thresholds.queue)
    if status != OK:
        limit = thresholds.queue[status == FAIL]
        findings.insert(0, Finding(status, "queue_backlog", {"ready": ready, "limit": limit}))
    if ready and not consumers:
        findings.insert(0, Finding(FAIL, "queue_unconsumed", {"ready": ready}))
    findings += [finding for finding in replicas if finding.status == OK]
    findings[:0] = [finding for finding in replicas if finding.status != OK]
    return Row(QUEUE, name, "", worst(f.status for f in findings), tuple(findings))


def quorum_findings(name: str, metrics: QueueMetrics | None, brokers: Sequence[str]) -> list[Finding]:
    """The replicas of a quorum queue on a cluster, by the nodes' metrics: a leader, a member on every node. A member
    on a node that does not answer is out (WARN); none on a node that answers is missing (WARN: a re-deploy grows the
    queue to it); a majority out, or no leader while every node answers, stops the queue (FAIL). A queue no node holds
    a member of is classic: no finding."""
    if metrics is None or len(brokers) < 2 or name not in metrics.members:
        return []
    online = [host for host in brokers if host in metrics.members[name]]
    out = [host for host in brokers if host not in metrics.answered]
    missing = [host for host in brokers if host in metrics.answered and host not in online]
    leaders = metrics.leaders.get(name) or []
    params = {"online": len(online), "members": len(brokers), "leader": leaders[0] if leaders else None, "out": out}
    if len(online) * 2 <= len(brokers):
        return [Finding(FAIL, "quorum_minority", params)]
    findings = [Finding(FAIL, "quorum_no_leader", params)] if not leaders and not out else []
    if missing:
        findings.append(Finding(WARN, "quorum_member_missing", {"hosts": missing}))
    findings.append(Finding(WARN if out else OK, "quorum_replicas", params))
    return findings


def _broker_out(row: Row) -> bool:
    """Whether a broker host's row says its broker node is out: the host down, or rabbitmq-server not active."""
    return row.status == DOWN or any(f.code == "unit_not_active" and f.params.get("unit") == BROKER_UNIT
                                     for f in row.findings)


def cluster_tolerance(fleet: Fleet, rows: Sequence[Row]) -> tuple[Row, ...]:
    """Broker host rows of a cluster weighed by its majority: with most nodes up, a node out is WARN (the fleet still
    works); with the majority lost, each such row FAILs saying so."""
    if len(fleet.broker_hosts) < 2:
        return tuple(rows)
    brokers = set(fleet.broker_hosts)
    out = [row.name for row in rows if row.kind == HOST and row.name in brokers and _broker_out(row)]
    if not out:
        return tuple(rows)
    params = {"up": len(brokers) - len(out), "nodes": len(brokers), "out": out}
    majority = params["up"] * 2 > params["nodes"]
    changed = []
    for row in rows:
        if row.kind == HOST and row.name in out:
            if majority:
                kept = tuple(Finding(WARN, f.code, f.params) if f.status in (FAIL, DOWN) else f for f in row.findings)
                row = replace(row, status=WARN, findings=(*kept, Finding(WARN, "broker_node_out", params)))
            else:
                row = replace(row, status=worst((row.status, FAIL)),
                              findings=(*row.findings, Finding(FAIL, "broker_majority_lost", params)))
        changed.append(row)
    return tuple(changed)


def broker_node_findings(states: Mapping[str, Mapping[str, Any] | None]) -> dict[str, list[Finding]]:
    """What is wrong with each broker node by its own metrics (host -> state, None: no answer): an alarm in effect
    (RabbitMQ then blocks the publishers of the whole cluster), or no link to another node that answers (a
    partition). A node that does not answer is judged by its host row alone."""
    answering = {host: state for host, state in states.items() if state and state.get("node")}
    found: dict[str, list[Finding]] = {}
    for host, state in answering.items():
        findings = []
        if state.get("alarms"):
            findings.append(Finding(FAIL, "broker_alarm", {"alarms": list(state["alarms"])}))
        others = sorted(other["node"] for name, other in answering.items() if name != host)
        peers = state.get("peers")
        unlinked = [node for node in others if node not in peers] if peers is not None else []
        if unlinked:
            findings.append(Finding(FAIL, "broker_partitioned", {"node": state["node"], "from": unlinked}))
        if findings:
            found[host] = findings
    return found


def _with_broker_findings(rows: Sequence[Row], found: Mapping[str, list[Finding]]) -> list[Row]:
    """rows, each broker host's row with the findings of its node's metrics added."""
    return [replace(row, status=worst((row.status, *(f.status for f in found[row.name]))),
                    findings=(*row.findings, *found[row.name]))
            if row.kind == HOST and row.name in found else row for row in rows]


def evaluate(fleet: Fleet, probes: Mapping[str, Probe], view: CeleryView,
             thresholds: Thresholds = Thresholds(), period: float = DEFAULT_BEAT_PERIOD,
             rolling: bool = False, queue_metrics: QueueMetrics | None = None,
             broker_states: Mapping[str, Mapping[str, Any] | None] | None = None) -> tuple[Row, ...]:
    """Every row of the verdict, hosts in inventory order each followed by its nodes (rolling: a release
    rollout is running, so release drift is expected; queue_metrics: the broker nodes' unacked counts and quorum
    replicas, see queue_row; broker_states: see broker_node_findings)."""
    processes = worker_processes(probes)
    heartbeat = fleet_heartbeat(fleet, probes, thresholds, period)
    releases = fleet_releases(fleet, probes)
    rows: list[Row] = []
    for host in checked_hosts(fleet):
        probe = probes.get(host.name) or Probe(host.name, error="not probed", down=True)
        rows.append(host_row(host, probe, fleet, view, thresholds, heartbeat, releases, rolling))
        rows += [node_row(node, probe, view, fleet.broadcast_queues, processes) for node in host.nodes]
        rows += unexpected_rows(host, probe, fleet)
    if view.error and fleet.broker_host is None and fleet.selected is None:
        rows.append(Row(HOST, "broker", "broker", FAIL, (Finding(FAIL, "broker_unreachable", {"error": view.error}),)))
    if view.depths is not None and not view.error:  # asked, and the broker answered
        unacked = queue_metrics.unacked if queue_metrics else None
        rows += [queue_row(name, view, thresholds, unacked, quorum_findings(name, queue_metrics, fleet.broker_hosts))
                 for name in fleet_queues(fleet)]
    if broker_states:
        rows = _with_broker_findings(rows, broker_node_findings(broker_states))
    return cluster_tolerance(fleet, rows)
