"""Benchmark of restarts: `make restart` of the idle 3-host sandbox, and `systemctl restart celery` of one host.

``bench_restart()`` returns rows ``[(label, value)]`` like the other benches. It deploys the
default sandbox fleet (warm: nothing changes when it is up and deployed), then times, RUNS times each:

- `make restart` (`fleetctl restart` when the Makefile has no such target): the rolling restart of every
  worker host, one at a time (drain, restart, verify), wall time on the controller, inventory included;
- on RESTART_HOST, from `systemctl restart celery` (sent over an SSH connection already open) until every
  node of the host answers ping again, polled from the controller through the broker every POLL seconds.
"""
from __future__ import annotations

import statistics
import time

from fleetctl import inventory as fleet_model
from fleetctl.bench.support import INVENTORY, BenchError, deploy_default_fleet, fleetctl_command
from fleetctl.bench.support import run as _run
from fleetctl.remote.ssh import connection

RUNS = 3
RESTART_HOST = "worker1"
POLL = 0.2  # seconds between two pings while the host's nodes come back
GUARD = 120  # seconds: a host whose nodes are not back by then fails the bench


def _restart_command() -> tuple[list[str], str]:
    """`make restart` when the Makefile has the target, else the command it runs."""
    if _run(["make", "--no-print-directory", "-n", "restart"]).returncode == 0:
        return ["make", "--no-print-directory", "restart"], "make restart"
    return fleetctl_command("restart", "--inventory", str(INVENTORY)), "fleetctl restart"


def _time_rolling(runs: int) -> list[float]:
    command, _ = _restart_command()
    times = []
    for _ in range(runs):
        started = time.monotonic()
        proc = _run(command)
        times.append(time.monotonic() - started)
        if proc.returncode != 0:
            raise BenchError(f"bench: {' '.join(command)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return times


def _all_answer(app, nodes: list[str]) -> bool:
    answers = app.control.inspect(destination=nodes, timeout=POLL, limit=len(nodes)).ping() or {}
    return set(nodes) <= set(answers)


def _time_host_restart(fleet: fleet_model.Fleet, host: fleet_model.Host, runs: int) -> list[float]:
    """Seconds from `systemctl restart celery` on host to all its nodes answering ping, runs times."""
    from celery import Celery
    nodes = [node.full_name for node in host.nodes]
    app = Celery("restart-bench", broker=fleet.broker_url, set_as_current=False)
    app.conf.update(accept_content=["json"], broker_connection_timeout=3)
    times = []
    with connection(host, 10) as cxn:
        cxn.open()
        for _ in range(runs):
            if not _all_answer(app, nodes):
                raise BenchError(f"bench: {host.name}'s nodes do not answer ping before the restart")
            started = time.monotonic()
            result = cxn.run("systemctl restart celery", hide=True, warn=True, in_stream=False)
            if result.exited != 0:
                raise BenchError(f"bench: systemctl restart celery on {host.name} failed:\n{result.stderr}")
            while not _all_answer(app, nodes):
                if time.monotonic() - started > GUARD:
                    raise BenchError(f"bench: {host.name}'s nodes did not answer within {GUARD} s")
                time.sleep(POLL)
            times.append(time.monotonic() - started)
    app.close()
    return times


def bench_restart() -> list[tuple[str, str]]:
    """Median wall times of a rolling restart of the idle sandbox and of one host's restart until ping."""
    deploy_default_fleet()
    fleet = fleet_model.load_fleet(INVENTORY)
    host = fleet.host(RESTART_HOST)
    _, label = _restart_command()
    rolling = _time_rolling(RUNS)
    single = _time_host_restart(fleet, host, RUNS)
    workers = len(fleet.workers)
    return [
        (f"{label}, idle 3-host sandbox ({workers} worker hosts, 1 at a time), median of {RUNS}",
         f"{statistics.median(rolling):.1f} s (min {min(rolling):.1f}, max {max(rolling):.1f}; target <= 30 s)"),
        (f"systemctl restart celery on {host.name} ({len(host.nodes)} nodes) to all answering ping, median of {RUNS}",
         f"{statistics.median(single):.1f} s (min {min(single):.1f}, max {max(single):.1f})"),
    ]
