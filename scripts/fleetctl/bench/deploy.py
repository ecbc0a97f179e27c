"""Benchmarks of the sandbox boot, the deploy and the broadcast round trip."""

from __future__ import annotations

import re
import statistics
import time

from fleetctl import sandbox
from fleetctl.bench.support import HOST_REPORT, BenchError, bench_inventory, down, timed, up


def _changed(output: str) -> int:
    return sum(int(n) for n in re.findall(r"changed=(\d+)", output))


def bench_sandbox() -> list[tuple[str, str]]:
    """Time from `sandbox up` to every host SSH-ready, cached image, 3 and 6 hosts."""
    sandbox.ensure_image("bookworm")
    rows = []
    times = {}
    for hosts in (3, 6):
        inventory = bench_inventory(f"boot{hosts}", hosts - 1)
        down(inventory)
        times[hosts] = up(inventory)
        warm = up(inventory)
        down(inventory)
        rows.append((f"sandbox up, {hosts} hosts, cold boot to SSH-ready", f"{times[hosts]:.2f} s"))
        rows.append((f"sandbox up, {hosts} hosts, already up (idempotent)", f"{warm:.2f} s"))
    rows.append(("sandbox up, 6 hosts / 3 hosts", f"{times[6] / times[3]:.2f}x (target <= 1.5x; 3 hosts <= 10 s)"))
    return rows


def bench_deploy(warm_runs: int = 3) -> list[tuple[str, str]]:
    """Cold deploy and warm (no change) re-deploy (median of warm_runs), 3-host and 6-host sandbox fleets."""
    rows = []
    warm = {}
    for hosts in (3, 6):
        inventory = bench_inventory(f"deploy{hosts}", hosts - 1)
        down(inventory)
        up(inventory)
        env = f"INVENTORY={inventory}"
        cold, _ = timed(["make", "--no-print-directory", "deploy", env])
        runs = [timed(["make", "--no-print-directory", "deploy", env]) for _ in range(warm_runs)]
        times = [elapsed for elapsed, _ in runs]
        warm[hosts] = statistics.median(times)
        down(inventory)
        rows.append((f"deploy, {hosts} hosts, cold", f"{cold:.1f} s (target <= 180 s)"))
        rows.append((f"deploy, {hosts} hosts, warm re-deploy, median of {warm_runs}",
                     f"{warm[hosts]:.1f} s (min {min(times):.1f}, max {max(times):.1f}), "
                     f"changed={max(_changed(out) for _, out in runs)}" + (" (target <= 20 s)" if hosts == 3 else "")))
    rows.append(("warm re-deploy, 6 hosts / 3 hosts", f"{warm[6] / warm[3]:.2f}x (target <= 1.3x)"))
    return rows


def bench_broadcast(runs: int = 5) -> list[tuple[str, str]]:
    """Broadcast round trip of host_report on the deployed sandbox fleet (deploys it first)."""
    from celery_app.app import app
    from fleetctl import broadcast
    from fleetctl.inventory import load_fleet

    timed(["make", "--no-print-directory", "deploy"])
    fleet = load_fleet(sandbox.DEFAULT_INVENTORY)
    last, runtime, tail = [], [], []
    for _ in range(runs):
        started = time.monotonic()
        outcome = broadcast.broadcast(app, fleet.broker_url, fleet.broadcast_queues[0], HOST_REPORT, [], {},
                                      expected=fleet.node_names, timeout=10, expires=60)
        returned = time.monotonic() - started
        if not outcome.ok:
            raise BenchError(f"bench: broadcast incomplete: missing {outcome.missing}, failed {outcome.failed}")
        last.append(max(a.received for a in outcome.answers))
        runtime.append(max(a.runtime for a in outcome.answers))
        tail.append(returned - last[-1])
    wall = statistics.median(timed(["make", "--no-print-directory", "broadcast", "TASK=host_report"])[0]
                             for _ in range(3))
    nodes = len(fleet.node_names)
    return [
        (f"broadcast host_report, {nodes} nodes: last answer after send",
         f"{statistics.median(last):.3f} s (median of {runs})"),
        ("  slowest task runtime on a node",
         f"{statistics.median(runtime):.3f} s (target: last answer <= runtime + 0.5 s)"),
        ("  command returns after the last answer", f"{statistics.median(tail) * 1000:.1f} ms (target <= 200 ms)"),
        ("  `make broadcast TASK=host_report` wall time", f"{wall:.2f} s (median of 3, incl. Python start-up)"),
    ]


def bench_rolling(warm_runs: int = 3) -> list[tuple[str, str]]:
    """A rolling config change of the 3-host sandbox (one node's concurrency on every worker host)."""
    inventory = bench_inventory("roll3", 2)
    down(inventory)
    up(inventory)
    env = f"INVENTORY={inventory}"
    try:
        timed(["make", "--no-print-directory", "deploy", env])
        warm = statistics.median(timed(["make", "--no-print-directory", "deploy", env])[0] for _ in range(warm_runs))
        rolled = []
        for concurrency in (3, 2):
            bench_inventory("roll3", 2, concurrency)
            elapsed, output = timed(["make", "--no-print-directory", "deploy", env])
            verify = [float(s) for s in re.findall(r"verified in ([0-9.]+) s", output)]
            rolled.append((elapsed, verify))
    finally:
        down(inventory)
    elapsed = statistics.median(t for t, _ in rolled)
    verify = statistics.median(sum(v) / len(v) for _, v in rolled if v) if any(v for _, v in rolled) else 0.0
    batches = max(len(v) for _, v in rolled)
    target = 2 * warm + verify * batches
    return [
        (f"deploy, 3 hosts, warm re-deploy, median of {warm_runs}", f"{warm:.1f} s"),
        ("rolling config change (2 worker hosts, 1 at a time), median of 2", f"{elapsed:.1f} s"),
        ("  verify per batch (fleetctl restart)", f"{verify:.1f} s x {batches} batches"),
        ("  target: 2 x warm re-deploy + verify per batch",
         f"{target:.1f} s ({'met' if elapsed <= target else 'NOT met'})"),
    ]
