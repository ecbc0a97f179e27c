"""Benchmarks: print figures for sandbox boot and deploy (no pass/fail, just numbers)."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import sandbox

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


def bench_deploy() -> list[tuple[str, str]]:
    """Cold deploy and warm (no change) re-deploy, 3-host and 6-host sandbox fleets."""
    rows = []
    warm = {}
    for hosts in (3, 6):
        inventory = _inventory(f"deploy{hosts}", hosts - 1)
        _down(inventory)
        _up(inventory)
        env = f"INVENTORY={inventory}"
        cold, _ = _timed(["make", "--no-print-directory", "deploy", env])
        warm[hosts], out = _timed(["make", "--no-print-directory", "deploy", env])
        _down(inventory)
        rows.append((f"deploy, {hosts} hosts, cold", f"{cold:.1f} s (target <= 180 s)"))
        rows.append((f"deploy, {hosts} hosts, warm re-deploy", f"{warm[hosts]:.1f} s, changed={_changed(out)}"
                     + (" (target <= 20 s)" if hosts == 3 else "")))
    rows.append(("warm re-deploy, 6 hosts / 3 hosts", f"{warm[6] / warm[3]:.2f}x (target <= 1.3x)"))
    return rows


BENCHES = {"sandbox": bench_sandbox, "deploy": bench_deploy}


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
