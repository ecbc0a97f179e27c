"""What a health check sees and decides: thresholds, probe results, findings, rows and the report."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from fleetctl.remote.control import CeleryView

OK, WARN, FAIL, DOWN = "OK", "WARN", "FAIL", "DOWN"
STATUSES = (OK, WARN, FAIL, DOWN)  # in order of gravity
HOST, NODE, QUEUE = "host", "node", "queue"
WORKER_UNIT, BEAT_UNIT, BROKER_UNIT = "celery.service", "celerybeat.service", "rabbitmq-server.service"
DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_PING_TIMEOUT = 2.0
DEFAULT_BEAT_PERIOD = 30.0  # used only when the app's beat_schedule has no heartbeat entry

__all__ = ["CeleryView", "Finding", "Probe", "Report", "Row", "Thresholds", "worst"]


class Finding(NamedTuple):
    """One thing a check found: its status (OK: a fact), a machine-readable code and its parameters."""

    status: str
    code: str
    params: Mapping[str, Any] = {}


@dataclass(frozen=True)
class Thresholds:
    """Where a host metric turns (WARN, FAIL): load per CPU (5-minute average), memory and disk used (%)."""

    load: tuple[float, float] = (1.5, 3.0)
    memory: tuple[float, float] = (85.0, 95.0)
    disk: tuple[float, float] = (80.0, 90.0)
    queue: tuple[float, float] = (1000.0, 10000.0)  # messages ready on an inventory queue
    heartbeat_periods: float = 2.0  # a heartbeat older than this many beat periods fails


@dataclass(frozen=True)
class Probe:
    """What one host's probe printed (data), or why there is none (error; down: SSH did not get in)."""

    host: str
    data: Mapping[str, Any] | None = None
    error: str | None = None
    down: bool = False


@dataclass(frozen=True)
class Row:
    """One line of the verdict: a host or a node, its status, its findings and (hosts) its metrics."""

    kind: str
    name: str
    host: str
    status: str
    findings: tuple[Finding, ...] = ()
    metrics: Mapping[str, Any] = field(default_factory=dict)

    @property
    def problems(self) -> tuple[Finding, ...]:
        """The findings that are not OK: why the row is not OK."""
        return tuple(f for f in self.findings if f.status != OK)

    @property
    def codes(self) -> tuple[str, ...]:
        """Codes of the problems, in order."""
        return tuple(f.code for f in self.problems)


def worst(statuses: Iterable[str]) -> str:
    """The gravest of statuses (OK when there is none)."""
    return max(statuses, key=STATUSES.index, default=OK)


@dataclass(frozen=True)
class Report:
    """Every row of one health check of an inventory."""

    inventory: str
    rows: tuple[Row, ...]
    elapsed: float = 0.0
    bound: float = 0.0
    summary: bool = False

    @property
    def status(self) -> str:
        return worst(row.status for row in self.rows)

    @property
    def healthy(self) -> bool:
        return self.status in (OK, WARN)

    def summarized(self) -> Report:
        """One row per host: the worst status of the host and its nodes, and every problem."""
        rows = []
        for row in self.rows:
            if row.kind != HOST:
                continue
            nodes = [r for r in self.rows if r.kind == NODE and r.host == row.name]
            bad = [r for r in nodes if r.status != OK]
            findings = [f for f in row.findings if f.code != "metrics"]
            findings += [Finding(r.status, "node_not_ok", {"node": r.name, "problems": r.problems}) for r in bad]
            if nodes:
                findings.append(Finding(OK, "nodes_ok", {"ok": len(nodes) - len(bad), "nodes": len(nodes)}))
            rows.append(Row(HOST, row.name, row.host, worst([row.status, *(r.status for r in nodes)]),
                            tuple(findings), row.metrics))
        rows += [row for row in self.rows if row.kind == QUEUE]  # queues belong to no host: kept as they are
        return Report(self.inventory, tuple(rows), self.elapsed, self.bound, summary=True)
