"""Health presenters: findings in words, the report as a table or as JSON."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from typing import Any

from fleetctl.health.model import HOST, NODE, OK, QUEUE, STATUSES, Finding, Report, Row


def _units(units: Iterable[str]) -> str:
    return ", ".join(unit.removesuffix(".service") for unit in units)


def _unit_state(p: Mapping[str, Any]) -> str:
    if not p["installed"]:
        return f"{p['unit']} not installed"
    sub = p.get("sub")
    return f"{p['unit']} {p['active']}" + (f" ({sub})" if sub and sub != p["active"] else "")


def _metric(metric: str, path: str | None, value: float) -> str:
    label = f"disk {path}" if metric == "disk" and path else metric
    return f"{label} {value:.2f}/cpu" if metric == "load" else f"{label} {value:.0f}%"


def _metrics(metrics: Mapping[str, Any]) -> str:
    seen = [_metric(name, None, metrics[name]) for name in ("load", "memory") if metrics.get(name) is not None]
    seen += [_metric("disk", path, value) for path, value in (metrics.get("disk") or {}).items() if value is not None]
    return ", ".join(seen)


def _silent(p: Mapping[str, Any]) -> str:
    words = f"no answer to ping within {p['timeout']:g} s"
    if p.get("process") is False:
        words += "; no worker process on the host"
        if p.get("stale_pidfiles"):
            words += f" (stale pid file {', '.join(p['stale_pidfiles'])})"
    elif p.get("process"):
        words += f"; its process (pid {', '.join(map(str, p['pids']))}) runs"
    return words


def _drift(p: Mapping[str, Any]) -> str:
    parts = [f"missing {', '.join(p['missing'])}"] if p["missing"] else []
    parts += [f"extra {', '.join(p['extra'])}"] if p["extra"] else []
    return "queue drift: " + "; ".join(parts)


def _backend_memory(p: Mapping[str, Any]) -> str:
    used = f"{p['used_memory'] / 2**20:.1f} MiB" if p.get("used_memory") is not None else "unknown"
    limit = (f" of maxmemory {p['maxmemory'] / 2**20:.0f} MiB ({p['percent']:g} %)" if p.get("maxmemory")
             else " (no maxmemory)")
    return f"result backend Redis on {p['redis_host']}: {used}{limit}"


def _unexpected(p: Mapping[str, Any]) -> str:
    where = f"the inventory puts it on {p['owner']}" if p.get("owner") else "not in the inventory"
    return f"unexpected node: {where} (pid {', '.join(map(str, p['pids']))})"


def _replicas(p: Mapping[str, Any]) -> str:
    words = f"quorum queue, {p['online']} of {p['members']} replicas online"
    words += f" ({', '.join(p['out'])} not answering)" if p["out"] else ""
    return words + (f", leader on {p['leader']}" if p.get("leader") else "")


WORDS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "host_unreachable": lambda p: f"unreachable over SSH: {p['error']}",
    "broker_unreachable": lambda p: f"broker unreachable from the controller: {p['error']}",
    "broker_node_out": lambda p: (f"broker node out of the cluster; {p['up']} of {p['nodes']} nodes up, the cluster "
                                  "keeps its majority"),
    "broker_majority_lost": lambda p: (f"only {p['up']} of {p['nodes']} broker nodes up ({', '.join(p['out'])} out): "
                                       "the cluster has lost its majority and pauses"),
    "broker_alarm": lambda p: (f"{', '.join(a.replace('_', ' ') for a in p['alarms'])} alarm in effect: RabbitMQ "
                               "blocks every publisher of the cluster"),
    "broker_partitioned": lambda p: f"partition: {p['node']} has no link to {', '.join(p['from'])}",
    "probe_failed": lambda p: f"probe failed: {p['error']}",
    "units_active": lambda p: f"{_units(p['units'])} active",
    "unit_not_active": _unit_state,
    "beat_elsewhere": lambda p: f"{p['unit']} active, but beat belongs on {p['beat_host'] or 'no host'} only",
    "release": lambda p: f"release {p['release']}",
    "release_drift": lambda p: (f"release {p['release']} while "
                                + ", ".join(f"{h} runs {r}" for h, r in p["others"].items()) + " (no rollout running)"),
    "heartbeat": lambda p: f"heartbeat {p['age']:.0f} s ago",
    "heartbeat_not_yet": lambda p: f"no heartbeat yet (beat up {p['beat_up_for']:.0f} s)",
    "heartbeat_missing": lambda p: "no heartbeat file on any worker host",
    "heartbeat_late_starting": lambda p: f"last heartbeat {p['age']:.0f} s ago (beat up {p['beat_up_for']:.0f} s)",
    "heartbeat_stale": lambda p: f"last heartbeat {p['age']:.0f} s ago (limit {p['limit']:.0f} s)",
    "metrics": lambda p: _metrics(p["metrics"]),
    "result_backend_unreachable": lambda p: (f"result backend Redis on {p['redis_host']} ({p['address']}:{p['port']}) "
                                             f"unreachable: {p['error']}"),
    "result_backend_refused": lambda p: (f"result backend Redis on {p['redis_host']} refused the fleet user: "
                                         f"{p['error']}"),
    "result_backend": lambda p: _backend_memory(p),
    "result_backend_memory": lambda p: _backend_memory(p),
    "metric_over": lambda p: (f"{_metric(p['metric'], p['path'], p['value'])} "
                              f"(>= {_metric(p['metric'], None, p['limit']).split(' ', 1)[1]})"),
    "node_unchecked": lambda p: "not checked: broker unreachable",
    "node_silent_host_down": lambda p: "no answer to ping; host unreachable",
    "node_silent": _silent,
    "pong": lambda p: "pong",
    "queues_unanswered": lambda p: f"no answer to active_queues within {p['timeout']:g} s",
    "queue_drift": _drift,
    "queues": lambda p: "queues " + (", ".join(f"{q} ({p['options'][q]})" if p.get("options", {}).get(q) else q
                                               for q in p["queues"]) or "none"),
    "queue_depth": lambda p: (f"{_count(p['ready'], 'message')} ready, "
                              + (f"{p['unacked']} unacknowledged, " if "unacked" in p else "")
                              + _count(p['consumers'], 'consumer')),
    "quorum_replicas": _replicas,
    "quorum_minority": lambda p: (f"quorum queue, only {p['online']} of {p['members']} replicas online: it takes and "
                                  "delivers no message until a majority is back"),
    "quorum_no_leader": lambda p: (f"quorum queue without a leader ({p['online']} of {p['members']} replicas online): "
                                   "it takes and delivers no message"),
    "quorum_member_missing": lambda p: (f"no replica on {', '.join(p['hosts'])} (its node is up: a re-deploy grows the "
                                        "queue to it)"),
    "queue_backlog": lambda p: f"backlog: {p['ready']} messages ready (>= {p['limit']:g})",
    "queue_unconsumed": lambda p: f"{_count(p['ready'], 'message')} ready and no consumer",
    "queue_undeclared": lambda p: "not declared on the broker (no node has consumed it since the broker started)",
    "queue_unanswered": lambda p: f"no answer from the broker within {p['timeout']:g} s",
    "queue_options_drift": lambda p: (f"queue {p['queue']} declared otherwise than the inventory: " + "; ".join(
        f"{key} {wanted!r} wanted, {got!r} declared" for key, (wanted, got) in p["differs"].items())),
    "node_duplicate": lambda p: (f"{len(p['processes'])} worker processes named {p['node']} "
                                 f"({', '.join(f'{host} pid {pid}' for host, pid in p['processes'])})"),
    "pid": lambda p: f"pid {p['pid']}",
    "node_unexpected": _unexpected,
    "node_not_ok": lambda p: f"{p['node']} {worst_of(p['problems'])}: {'; '.join(map(describe, p['problems']))}",
    "nodes_ok": lambda p: f"{p['ok']}/{p['nodes']} nodes OK",
}


def worst_of(findings: Iterable[Finding]) -> str:
    return max((f.status for f in findings), key=STATUSES.index, default=OK)


def describe(finding: Finding) -> str:
    """One finding in words."""
    words = WORDS.get(finding.code)
    return words(finding.params) if words else f"{finding.code} {dict(finding.params)}"


def reasons(row: Row) -> tuple[str, ...]:
    """Why a row is not OK, in words."""
    return tuple(describe(f) for f in row.problems)


def facts(row: Row) -> tuple[str, ...]:
    """What was seen on a row (its OK findings), in words."""
    return tuple(text for text in (describe(f) for f in row.findings if f.status == OK) if text)


def _detail(row: Row) -> str:
    return "; ".join(reasons(row) or facts(row))


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _plain_status(status: str, width: int) -> str:
    return f"{status:<{width}}"


def render_text(report: Report, paint: Callable[[str, int], str] = _plain_status) -> str:
    """The verdict as a table: one row per host (and per node unless summarized), then a verdict line.

    ``paint(status, width)`` writes a status word (the CLI colours it on a terminal).
    """
    names = [row.name if row.kind == HOST else f"queue {row.name}" if row.kind == QUEUE else f"  {row.name}"
             for row in report.rows]
    title = "HOST" if report.summary else "HOST / NODE"
    width = max([len(title), *map(len, names)])
    lines = [f"{title:<{width}}  STATUS  DETAIL"]
    lines += [f"{name:<{width}}  {paint(row.status, 6)}  {_detail(row)}".rstrip()
              for name, row in zip(names, report.rows)]
    counts = {status: sum(row.status == status for row in report.rows) for status in STATUSES}
    hosts = sum(row.kind == HOST for row in report.rows)
    nodes = sum(row.kind == NODE for row in report.rows)
    queues = sum(row.kind == QUEUE for row in report.rows)
    tally = ", ".join(f"{count} {status}" for status, count in counts.items() if count)
    what = _count(hosts, "host") + ("" if report.summary else f", {_count(nodes, 'node')}") + (
        f", {_count(queues, 'queue')}" if queues else "")
    verdict = "HEALTHY" if report.healthy else "UNHEALTHY"
    lines.append(f"{verdict}: {what}: {tally} (checks took {report.elapsed:.1f} s, bound {report.bound:g} s)")
    return "\n".join(lines)


def plain(value: Any) -> Any:
    """value with findings turned into JSON objects (they nest in summaries)."""
    if isinstance(value, Finding):
        return {"status": value.status, "code": value.code, "params": plain(dict(value.params))}
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def row_json(row: Row) -> dict[str, Any]:
    """One row as JSON-ready data: the keys of old (reasons and facts in words) plus codes and findings."""
    data = {key: value for key, value in asdict(row).items() if key not in ("findings", "metrics")}
    return {**data, "reasons": list(reasons(row)), "facts": list(facts(row)), "codes": list(row.codes),
            "findings": plain(row.findings), "metrics": plain(dict(row.metrics))}


def report_json(report: Report) -> dict[str, Any]:
    """The verdict as JSON-ready data."""
    return {
        "inventory": report.inventory, "status": report.status, "healthy": report.healthy,
        "summary": report.summary, "elapsed": round(report.elapsed, 3), "bound": report.bound,
        "rows": [row_json(row) for row in report.rows],
    }
