"""Gathering a health check: the probe on every host over SSH and the nodes' answers, at once, bounded."""
from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from importlib import resources

from fleetctl.concurrency import Background
from fleetctl.health.model import (
    DEFAULT_BEAT_PERIOD,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_PING_TIMEOUT,
    Probe,
    Report,
    Thresholds,
)
from fleetctl.health.verdict import beat_period, checked_hosts, evaluate, fleet_queues
from fleetctl.inventory import BROKER_VHOST, Fleet, Host
from fleetctl.remote.broker_metrics import fetch_node_states, fetch_queues_all, node_url, queues_url
from fleetctl.remote.control import CeleryView, inspect_nodes
from fleetctl.remote.ssh import RunResult, run_on_hosts

PROBE_PYTHONS = ("/opt/celery/venv/bin/python3", "/usr/bin/python3", "python3")


def probe_source() -> str:
    """The on-host probe program (fleetctl/health/probe.py)."""
    return resources.files("fleetctl.health").joinpath("probe.py").read_text(encoding="utf-8")


def probe_command(script: str | None = None) -> str:
    """The shell command that runs the probe with the first python found (venv, then system)."""
    encoded = base64.b64encode((script or probe_source()).encode()).decode()
    return (f"for p in {' '.join(PROBE_PYTHONS)}; do if command -v \"$p\" >/dev/null 2>&1; then "
            f"exec \"$p\" -I -c 'import base64; exec(base64.b64decode(\"{encoded}\"))'; fi; done; "
            "echo 'no python3 on this host' >&2; exit 127")


def probe_from(result: RunResult) -> Probe:
    """What one host's probe run says: its data, or why there is none."""
    name = result.host
    if result.error is not None:
        error = f"probe {result.error}" if result.timed_out else result.error
        return Probe(name, error=error, down=result.down)
    if result.exited != 0:
        return Probe(name, error=f"exit {result.exited}: {(result.stderr.strip() or result.stdout.strip())[-300:]}")
    try:
        data = json.loads(result.stdout)
    except ValueError:
        return Probe(name, error=f"no JSON from the probe: {result.stdout.strip()[:200]!r}")
    return Probe(name, data=data) if isinstance(data, dict) else Probe(name, error="probe printed no JSON object")


def probe_hosts(hosts: Sequence[Host], connect_timeout: float, deadline: float) -> dict[str, Probe]:
    """Run the probe on every host at once (one SSH round trip each); hosts not done by deadline are DOWN."""
    timeout = deadline - time.monotonic()
    results = run_on_hosts(hosts, probe_command(), connect_timeout=connect_timeout, timeout=timeout,
                           deadline=deadline, become=True)
    return {name: probe_from(result) for name, result in results.items()}


def broker_queues(fleet: Fleet, queues: Sequence[str], deadline: float) -> Background | None:
    """The queues' unacknowledged counts, leaders and quorum members from every broker node's metrics endpoint,
    asked in the background (None: the broker serves no such endpoint, or there is no queue to ask of)."""
    if not (queues and fleet.broker_metrics and fleet.broker_address):
        return None
    urls = {name: queues_url(fleet.host(name).address, BROKER_VHOST) for name in fleet.broker_hosts} or {
        "broker": queues_url(fleet.broker_address, BROKER_VHOST)}
    return Background(lambda: fetch_queues_all(urls, BROKER_VHOST, max(0.1, deadline - time.monotonic())))


def broker_states(fleet: Fleet, deadline: float) -> Background | None:
    """Every broker node's own state (alarms, cluster links) from its metrics endpoint, asked in the background (None:
    the broker serves no such endpoint)."""
    if not (fleet.broker_metrics and fleet.broker_hosts):
        return None
    urls = {name: node_url(fleet.host(name).address) for name in fleet.broker_hosts}
    return Background(lambda: fetch_node_states(urls, max(0.1, deadline - time.monotonic())))


def app_beat_period() -> float:
    """The heartbeat period of the app's beat_schedule (celery_app/config.py)."""
    try:
        from celery_app.config import beat_schedule
    except Exception:  # noqa: BLE001 - the app's config cannot load here: use the documented period
        return DEFAULT_BEAT_PERIOD
    return beat_period(beat_schedule)


def check(fleet: Fleet, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
          ping_timeout: float = DEFAULT_PING_TIMEOUT, thresholds: Thresholds = Thresholds(),
          period: float | None = None, inventory: str = "") -> Report:
    """Probe every host and ask every node, at once, and judge the answers against the fleet."""
    broker_url = fleet.require_broker_url(inventory)
    started = time.monotonic()
    bound = connect_timeout + ping_timeout
    deadline = started + bound
    hosts = checked_hosts(fleet)
    ssh = Background(lambda: probe_hosts(hosts, connect_timeout, deadline))
    # Celery is imported while the probes are on their way, and in this thread only (see Background).
    import celery.app.control  # noqa: F401

    period = app_beat_period() if period is None else period
    queues = fleet_queues(fleet)
    celery = Background(lambda: inspect_nodes(broker_url, fleet.node_names, ping_timeout, connect_timeout, deadline,
                                              queues))
    queue_metrics = broker_queues(fleet, queues, deadline)
    states = broker_states(fleet, deadline)
    view = celery.result(deadline + 0.5, default=CeleryView(timeout=ping_timeout,
                                                            error=f"no answer within {bound:g} s"))
    probes = ssh.result(deadline + 0.5, default={})
    from fleetctl.release import rollout_running  # here: fleetctl.release imports the restart, which imports this

    rows = evaluate(fleet, probes, view, thresholds, period, rolling=bool(inventory) and rollout_running(inventory),
                    queue_metrics=queue_metrics.result(deadline + 0.5) if queue_metrics else None,
                    broker_states=states.result(deadline + 0.5) if states else None)
    return Report(inventory=inventory, rows=rows, elapsed=time.monotonic() - started, bound=bound)
