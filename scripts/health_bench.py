"""Benchmark of the health check: `make health` on the 3-host sandbox next to a stock `celery inspect ping`.

``bench_health()`` returns rows ``[(label, value)]`` like the benches of scripts/bench.py. It deploys the
default sandbox fleet (warm: nothing changes when it is up), then times, RUNS times each, in the same run
against the same fleet: `make health` on the controller (wall time, ansible-inventory included), and on
a worker host the operator's `. /etc/conf.d/celery && $CELERY_BIN -A $CELERY_APP inspect ping` (its own
run time on the host, SSH excluded). Stock ping waits out its 1 s timeout because it does not know how
many nodes to expect; the health check asks the inventory's nodes by name and returns when all answered.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import fleet as fleet_model  # noqa: E402
from bench_support import deploy_default_fleet, run as _run  # noqa: E402

INVENTORY = ROOT / "playbooks" / "inventories" / "sandbox" / "hosts.yml"
RUNS = 5
PING_HOST = "worker1"
STOCK_PING = ". /etc/conf.d/celery && $CELERY_BIN -A $CELERY_APP inspect ping"


def _health_command() -> tuple[list[str], str]:
    """`make health` when the Makefile has the target, else the command it runs."""
    if _run(["make", "--no-print-directory", "-n", "health"]).returncode == 0:
        return ["make", "--no-print-directory", "health"], "make health"
    return [str(ROOT / ".venv" / "bin" / "python"), "scripts/health.py", "--inventory", str(INVENTORY)], "health.py"


def _time_health(runs: int) -> tuple[list[float], list[int]]:
    command, _ = _health_command()
    times, codes = [], []
    for _ in range(runs):
        started = time.monotonic()
        proc = _run(command)
        times.append(time.monotonic() - started)
        codes.append(proc.returncode)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"bench: {' '.join(command)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return times, codes


def _time_stock_ping(host: fleet_model.Host, runs: int) -> list[float]:
    """Run time, measured on host itself, of the operator's stock inspect ping."""
    from fabric import Connection

    connect_kwargs = {"key_filename": host.key_file, "look_for_keys": False} if host.key_file else {}
    timed = f"TIMEFORMAT=%R; time ( cd /tmp && {STOCK_PING} >/dev/null )"
    times = []
    with Connection(host.address, user=host.user, port=host.port, connect_timeout=10,
                    connect_kwargs=connect_kwargs) as cxn:
        for _ in range(runs):
            result = cxn.run(f"bash -c '{timed}'", hide=True, warn=True, in_stream=False)
            if result.exited != 0:
                raise SystemExit(f"bench: stock ping on {host.name} failed:\n{result.stdout}\n{result.stderr}")
            times.append(float(result.stderr.strip().splitlines()[-1]))
    return times


def bench_health() -> list[tuple[str, str]]:
    """Median wall time of `make health` (healthy 3-host sandbox) next to a stock inspect ping on a worker."""
    deploy_default_fleet()
    host = fleet_model.load_fleet(INVENTORY).host(PING_HOST)
    _, label = _health_command()
    health_times, codes = _time_health(RUNS)
    ping_times = _time_stock_ping(host, RUNS)
    health_median, ping_median = statistics.median(health_times), statistics.median(ping_times)
    return [
        (f"{label}, 3-host sandbox, median of {RUNS}",
         f"{health_median:.2f} s (min {min(health_times):.2f}, max {max(health_times):.2f}; "
         f"exit {','.join(map(str, codes))}; target ~1 s)"),
        (f"stock inspect ping on {PING_HOST}, median of {RUNS}",
         f"{ping_median:.2f} s (min {min(ping_times):.2f}, max {max(ping_times):.2f})"),
        (f"{label} / stock inspect ping", f"{health_median / ping_median:.2f}x"),
    ]


if __name__ == "__main__":
    for row_label, value in bench_health():
        print(f"  {row_label:<55} {value}", flush=True)
