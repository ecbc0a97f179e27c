"""What the benchmarks share: timed commands in the repository, bench inventories, the default fleet deployed."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from fleetctl.errors import FleetctlError
from fleetctl.paths import ANSIBLE_CONFIG, REPO_ROOT, SANDBOX_INVENTORY, STATE_DIR

ROOT = REPO_ROOT
INVENTORY = SANDBOX_INVENTORY
BENCH_DIR = STATE_DIR / "bench"
HOST_REPORT = "celery_app.tasks.maintenance.host_report"  # a broadcast names its task in full


class BenchError(FleetctlError):
    """A benchmark could not run to its end (exit 1)."""


def fleetctl_command(*args: str) -> list[str]:
    """The fleetctl command line, run with this interpreter."""
    return [sys.executable, "-m", "fleetctl", *args]


def run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run cmd in the repository root, output captured."""
    return subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, env=env)


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """(seconds, stdout) of cmd; BenchError when it fails."""
    started = time.monotonic()
    proc = run(cmd, env)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise BenchError(f"bench: {' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed, proc.stdout


def bench_inventory(name: str, workers: int, concurrency: int | None = None) -> Path:
    """A bench inventory: one broker, N workers, the last worker runs beat (nodes: concurrency when given)."""
    path = BENCH_DIR / name / "hosts.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["all:", "  children:", "    rabbitmq:", "      hosts:", f"        {name}-mq:",
             "    celery_workers:", "      hosts:"]
    node = f"          celery_worker_nodes: [{{name: celery, queues: [celery], concurrency: {concurrency}}}]"
    for i in range(1, workers + 1):
        lines += [f"        {name}-w{i}:", *([node] if concurrency else [])]
    lines += ["    celery_beat:", "      hosts:", f"        {name}-w{workers}:", ""]
    path.write_text("\n".join(lines))
    return path


def up(inventory: Path) -> float:
    """Seconds `fleetctl sandbox up` took for inventory."""
    return timed(fleetctl_command("sandbox", "up", str(inventory)))[0]


def down(inventory: Path) -> None:
    timed(fleetctl_command("sandbox", "down", str(inventory)))


def deploy_default_fleet() -> None:
    """`make deploy` of the default sandbox fleet (warm: nothing changes when it is up), or BenchError."""
    os.environ.setdefault("ANSIBLE_CONFIG", str(ANSIBLE_CONFIG))
    deployed = run(["make", "--no-print-directory", "deploy"])
    if deployed.returncode != 0:
        raise BenchError(f"bench: make deploy failed:\n{deployed.stdout[-3000:]}\n{deployed.stderr[-3000:]}")


def run_on(inventory: Path, host_name: str, command: str, what: str = "bench") -> str:
    """stdout of a shell command run as root on a host of inventory, or BenchError naming what and the host."""
    from fleetctl import inventory as fleet_model
    from fleetctl.remote.ssh import connection

    host = fleet_model.load_fleet(inventory).host(host_name)
    with connection(host, 10) as cxn:
        result = cxn.run(command, hide=True, warn=True, in_stream=False)
    if result.exited != 0:
        raise BenchError(f"{what} on {host_name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result.stdout


def run_script(inventory: Path, host_name: str, script: str, *args: str, exports: str = "", what: str = "bench") -> str:
    """stdout of a Python script run by the fleet's virtualenv on a deployed host, /etc/conf.d/celery sourced
    (exports: its variables the script reads), or BenchError naming what and the host."""
    command = (f". /etc/conf.d/celery && {f'export {exports} && ' if exports else ''}cd /tmp && "
               f"/opt/celery/venv/bin/python -c {shlex.quote(script)} {' '.join(shlex.quote(arg) for arg in args)}")
    return run_on(inventory, host_name, command, what)
