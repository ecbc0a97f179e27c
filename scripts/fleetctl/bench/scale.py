"""Scale benchmark: a large sandbox fleet (one broker, N-1 workers) next to the 3-host one, same run."""
from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

from fleetctl import sandbox
from fleetctl.bench.support import HOST_REPORT, BenchError, bench_inventory, down, run, timed, up
from fleetctl.paths import VENV_BIN

WARM_RUNS = 3
HEALTH_RUNS = 5
BROADCAST_RUNS = 3


def _changed(output: str) -> int:
    return sum(int(n) for n in re.findall(r"changed=(\d+)", output))


def _deploy(inventory: Path) -> tuple[float, str]:
    return timed(["make", "--no-print-directory", "deploy", f"INVENTORY={inventory}"])


def _health(inventory: Path) -> list[float]:
    times = []
    for _ in range(HEALTH_RUNS):
        started = time.monotonic()
        proc = run([str(VENV_BIN / "fleetctl"), "health", "--inventory", str(inventory), "--format", "json"])
        times.append(time.monotonic() - started)
        if proc.returncode != 0:
            raise BenchError(f"bench: fleetctl health of {inventory} is not healthy:\n{proc.stdout[-3000:]}")
    return times


def _broadcast(inventory: Path) -> tuple[float, float, int]:
    """(slowest answer after send, median over runs; fastest; nodes), host_report to every node."""
    from celery_app.app import app
    from fleetctl.broadcast import broadcast
    from fleetctl.inventory import load_fleet

    fleet = load_fleet(inventory)
    slowest = []
    for _ in range(BROADCAST_RUNS):
        outcome = broadcast(app, fleet.require_broker_url(inventory), fleet.broadcast_queues[0], HOST_REPORT, [],
                            {}, expected=fleet.node_names, timeout=30, expires=60)
        if not outcome.ok:
            raise BenchError(f"bench: broadcast incomplete: missing {outcome.missing}, failed {outcome.failed}")
        slowest.append(max(answer.received for answer in outcome.answers))
    return statistics.median(slowest), min(slowest), len(fleet.node_names)


def _memory_per_host(inventory: Path) -> float:
    """Mean memory (MiB) charged to a sandbox host's cgroup, over the fleet's hosts."""
    fid = sandbox.fleet_id(inventory)
    fleet = next(f for f in sandbox.load_fleets() if f.fid == fid)
    used = []
    for host in fleet.hosts.values():
        for directory in sandbox.cgroup_dirs(host.machine):
            current = directory / "memory.current"
            if current.exists():
                used.append(int(current.read_text()) / 2**20)
                break
    return statistics.mean(used) if used else float("nan")


def _measure(hosts: int) -> dict[str, float]:
    inventory = bench_inventory(f"scale{hosts}", hosts - 1)
    down(inventory)
    boot = up(inventory)
    try:
        cold, _ = _deploy(inventory)
        warm_runs = [_deploy(inventory) for _ in range(WARM_RUNS)]
        health = _health(inventory)
        slowest, fastest, nodes = _broadcast(inventory)
        memory = _memory_per_host(inventory)
    finally:
        down(inventory)
    return {"boot": boot, "cold": cold, "warm": statistics.median(t for t, _ in warm_runs),
            "changed": max(_changed(out) for _, out in warm_runs), "health": statistics.median(health),
            "health_max": max(health), "broadcast": slowest, "broadcast_min": fastest, "nodes": nodes,
            "memory": memory}


def bench_scale(hosts: int = 24) -> list[tuple[str, str]]:
    """Health, broadcast and warm re-deploy of a hosts-host sandbox fleet next to a 3-host one."""
    if hosts < 4:
        raise BenchError("bench scale: --hosts must be at least 4 (it is compared with a 3-host fleet)")
    small, large = _measure(3), _measure(hosts)
    rows = []
    for label, fig in (("3 hosts", small), (f"{hosts} hosts", large)):
        rows += [
            (f"{label}: sandbox up, cold boot to SSH-ready", f"{fig['boot']:.1f} s"),
            (f"{label}: deploy, cold", f"{fig['cold']:.1f} s"),
            (f"{label}: warm re-deploy, median of {WARM_RUNS}", f"{fig['warm']:.1f} s, changed={fig['changed']}"),
            (f"{label}: fleetctl health, median of {HEALTH_RUNS}",
             f"{fig['health']:.2f} s (max {fig['health_max']:.2f})" + ("; target <= 1.0 s" if fig is large else "")),
            (f"{label}: broadcast host_report, {fig['nodes']} nodes, last answer",
             f"{fig['broadcast']:.3f} s (median of {BROADCAST_RUNS}, best {fig['broadcast_min']:.3f})"
             + ("; target <= 0.3 s" if fig is large else "")),
            (f"{label}: memory per sandbox host (cgroup, deployed)", f"{fig['memory']:.0f} MiB"),
        ]
    rows.append((f"warm re-deploy, {hosts} hosts / 3 hosts", f"{large['warm'] / small['warm']:.2f}x (target <= 2.5x)"))
    rows.append((f"memory of the {hosts}-host fleet", f"{large['memory'] * hosts / 1024:.1f} GiB of this machine's "
                 "24 GiB"))
    return rows
