"""Benchmark of the health check: `fleetctl health` on the 3-host sandbox next to a stock `celery inspect ping`.

``bench_health()`` returns rows ``[(label, value)]`` like the other benches. It deploys the
default sandbox fleet (warm: nothing changes when it is up), then times, RUNS times each, in the same run
against the same fleet: `make health` on the controller (wall time, ansible-inventory included), and on
a worker host the operator's `. /etc/conf.d/celery && $CELERY_BIN -A $CELERY_APP inspect ping` (its own
run time on the host, SSH excluded). Stock ping waits out its 1 s timeout because it does not know how
many nodes to expect; the health check asks the inventory's nodes by name and returns when all answered.
"""
from __future__ import annotations

import statistics
import time

from fleetctl import inventory as fleet_model
from fleetctl.bench.support import INVENTORY, BenchError, deploy_default_fleet
from fleetctl.bench.support import run as _run
from fleetctl.paths import VENV_BIN
from fleetctl.remote.ssh import connection

RUNS = 5
PING_HOST = "worker1"
STOCK_PING = ". /etc/conf.d/celery && $CELERY_BIN -A $CELERY_APP inspect ping"


COMMANDS = {
    "make health": ["make", "--no-print-directory", "health"],
    "fleetctl health": [str(VENV_BIN / "fleetctl"), "health", "--inventory", str(INVENTORY)],
}


def _time(command: list[str], runs: int, codes_ok: tuple[int, ...] = (0, 1)) -> tuple[list[float], list[int]]:
    times, codes = [], []
    for _ in range(runs):
        started = time.monotonic()
        proc = _run(command)
        times.append(time.monotonic() - started)
        codes.append(proc.returncode)
        if proc.returncode not in codes_ok:
            raise BenchError(f"bench: {' '.join(command)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return times, codes


def _time_stock_ping(host: fleet_model.Host, runs: int) -> list[float]:
    """Run time, measured on host itself, of the operator's stock inspect ping."""
    timed = f"TIMEFORMAT=%R; time ( cd /tmp && {STOCK_PING} >/dev/null )"
    times = []
    with connection(host, 10) as cxn:
        for _ in range(runs):
            result = cxn.run(f"bash -c '{timed}'", hide=True, warn=True, in_stream=False)
            if result.exited != 0:
                raise BenchError(f"bench: stock ping on {host.name} failed:\n{result.stdout}\n{result.stderr}")
            times.append(float(result.stderr.strip().splitlines()[-1]))
    return times


def _figures(times: list[float]) -> str:
    return f"{statistics.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f})"


def _queue_section_rows(fleet: fleet_model.Fleet) -> list[tuple[str, str]]:
    """The broker side of health (ping, active_queues) with the queue section (depths asked passively, unacknowledged
    counts from the broker's metrics endpoint where it serves one, both as health asks them) next to without."""
    from fleetctl.health.gather import broker_queues
    from fleetctl.health.verdict import fleet_queues
    from fleetctl.remote.control import inspect_nodes

    queues = fleet_queues(fleet)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(RUNS):
        for with_queues in (False, True):
            started = time.monotonic()
            unacked = broker_queues(fleet, queues, started + 5) if with_queues else None
            view = inspect_nodes(fleet.broker_url, fleet.node_names, 2.0, 3.0, started + 5,
                                 queues if with_queues else ())
            counts = unacked.result(started + 5.5) if unacked else None
            times[with_queues].append(time.monotonic() - started)
            if view.error:
                raise BenchError(f"bench: the broker did not answer: {view.error}")
            if unacked and counts is None:
                raise BenchError("bench: the broker's metrics endpoint gave no unacknowledged counts")
    without, with_ = statistics.median(times[False]), statistics.median(times[True])
    return [(f"health broker checks without the queue section, median of {RUNS}", _figures(times[False])),
            (f"  with the queue section ({len(queues)} queues"
             f"{', unacknowledged counts from the broker metrics' if fleet.broker_metrics else ''})",
             f"{_figures(times[True])}; {with_ - without:+.3f} s (target <= +0.1 s)")]


def bench_health() -> list[tuple[str, str]]:
    """Median wall time of `fleetctl health` and `make health` (healthy 3-host sandbox) next to a stock ping."""
    deploy_default_fleet()
    host = fleet_model.load_fleet(INVENTORY).host(PING_HOST)
    rows = []
    medians = {}
    for label, command in COMMANDS.items():
        # An unhealthy verdict (a loaded machine's load, a beat just started) is still a timed run: make
        # exits 2 when fleetctl exits 1.
        times, codes = _time(command, RUNS, (0, 1, 2) if command[0] == "make" else (0, 1))
        medians[label] = statistics.median(times)
        rows.append((f"{label}, 3-host sandbox, median of {RUNS}",
                     f"{_figures(times)}; exit {','.join(map(str, codes))}; target <= 0.62 s (before fleetctl)"))
    ping_times = _time_stock_ping(host, RUNS)
    rows.append((f"stock inspect ping on {PING_HOST}, median of {RUNS}", _figures(ping_times)))
    ratio = medians["fleetctl health"] / statistics.median(ping_times)
    rows.append(("fleetctl health / stock inspect ping", f"{ratio:.2f}x"))
    rows += _queue_section_rows(fleet_model.load_fleet(INVENTORY))
    help_times, _ = _time([str(VENV_BIN / "fleetctl"), "--help"], RUNS, (0,))
    rows.append((f"fleetctl --help start-up, median of {RUNS}", _figures(help_times)))
    return rows
