"""Benchmarks: print figures for sandbox boot and deploy (no pass/fail, just numbers)."""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import sandbox
from health_bench import bench_health
from restart_bench import bench_restart

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".sandbox" / "bench"


def _inventory(name: str, workers: int) -> Path:
    """A bench inventory: one broker, N workers, the last worker runs beat."""
    path = BENCH_DIR / name / "hosts.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["all:", "  children:", "    rabbitmq:", "      hosts:", f"        {name}-mq:",
             "    celery_workers:", "      hosts:"]
    lines += [f"        {name}-w{i}:" for i in range(1, workers + 1)]
    lines += ["    celery_beat:", "      hosts:", f"        {name}-w{workers}:", ""]
    path.write_text("\n".join(lines))
    return path


def _timed(cmd: list[str]) -> tuple[float, str]:
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed, proc.stdout


def _up(inventory: Path) -> float:
    return _timed([sys.executable, "scripts/sandbox.py", "up", str(inventory)])[0]


def _down(inventory: Path) -> None:
    _timed([sys.executable, "scripts/sandbox.py", "down", str(inventory)])


def _changed(output: str) -> int:
    return sum(int(n) for n in re.findall(r"changed=(\d+)", output))


def bench_sandbox() -> list[tuple[str, str]]:
    """Time from `sandbox up` to every host SSH-ready, cached image, 3 and 6 hosts."""
    sandbox.ensure_image("bookworm")
    rows = []
    times = {}
    for hosts in (3, 6):
        inventory = _inventory(f"boot{hosts}", hosts - 1)
        _down(inventory)
        times[hosts] = _up(inventory)
        warm = _up(inventory)
        _down(inventory)
        rows.append((f"sandbox up, {hosts} hosts, cold boot to SSH-ready", f"{times[hosts]:.2f} s"))
        rows.append((f"sandbox up, {hosts} hosts, already up (idempotent)", f"{warm:.2f} s"))
    rows.append(("sandbox up, 6 hosts / 3 hosts", f"{times[6] / times[3]:.2f}x (target <= 1.5x; 3 hosts <= 10 s)"))
    return rows


def bench_deploy(warm_runs: int = 3) -> list[tuple[str, str]]:
    """Cold deploy and warm (no change) re-deploy (median of warm_runs), 3-host and 6-host sandbox fleets."""
    rows = []
    warm = {}
    for hosts in (3, 6):
        inventory = _inventory(f"deploy{hosts}", hosts - 1)
        _down(inventory)
        _up(inventory)
        env = f"INVENTORY={inventory}"
        cold, _ = _timed(["make", "--no-print-directory", "deploy", env])
        runs = [_timed(["make", "--no-print-directory", "deploy", env]) for _ in range(warm_runs)]
        times = [elapsed for elapsed, _ in runs]
        warm[hosts] = statistics.median(times)
        _down(inventory)
        rows.append((f"deploy, {hosts} hosts, cold", f"{cold:.1f} s (target <= 180 s)"))
        rows.append((f"deploy, {hosts} hosts, warm re-deploy, median of {warm_runs}",
                     f"{warm[hosts]:.1f} s (min {min(times):.1f}, max {max(times):.1f}), "
                     f"changed={max(_changed(out) for _, out in runs)}" + (" (target <= 20 s)" if hosts == 3 else "")))
    rows.append(("warm re-deploy, 6 hosts / 3 hosts", f"{warm[6] / warm[3]:.2f}x (target <= 1.3x)"))
    return rows


def bench_broadcast(runs: int = 5) -> list[tuple[str, str]]:
    """Broadcast round trip of host_report on the deployed sandbox fleet (deploys it first)."""
    import statistics

    import broadcast
    import fleet as fleet_model

    _timed(["make", "--no-print-directory", "deploy"])
    sys.path.insert(0, str(ROOT))
    from celery_app.app import app

    fleet = fleet_model.load_fleet(sandbox.DEFAULT_INVENTORY)
    last, runtime, tail = [], [], []
    for _ in range(runs):
        started = time.monotonic()
        outcome = broadcast.broadcast(app, fleet.broker_url, fleet.broadcast_queues[0], "host_report", [], {},
                                      expected=fleet.node_names, timeout=10, expires=60)
        returned = time.monotonic() - started
        if not outcome.ok:
            raise SystemExit(f"bench: broadcast incomplete: missing {outcome.missing}, failed {outcome.failed}")
        last.append(max(a.received for a in outcome.answers))
        runtime.append(max(a.runtime for a in outcome.answers))
        tail.append(returned - last[-1])
    wall = statistics.median(_timed(["make", "--no-print-directory", "broadcast", "TASK=host_report"])[0]
                             for _ in range(3))
    nodes = len(fleet.node_names)
    return [
        (f"broadcast host_report, {nodes} nodes: last answer after send", f"{statistics.median(last):.3f} s (median of {runs})"),
        ("  slowest task runtime on a node", f"{statistics.median(runtime):.3f} s (target: last answer <= runtime + 0.5 s)"),
        ("  command returns after the last answer", f"{statistics.median(tail) * 1000:.1f} ms (target <= 200 ms)"),
        ("  `make broadcast TASK=host_report` wall time", f"{wall:.2f} s (median of 3, incl. Python start-up)"),
    ]


BENCHES = {"sandbox": bench_sandbox, "deploy": bench_deploy, "broadcast": bench_broadcast, "health": bench_health,
           "restart": bench_restart}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all of {', '.join(BENCHES)})")
    names = parser.parse_args(argv).names or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(BENCHES)}")
    os.environ.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))
    for name in names:
        print(f"== {name}", flush=True)
        for label, value in BENCHES[name]():
            print(f"  {label:<55} {value}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
