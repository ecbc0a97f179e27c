"""Release bench: a 3-host fleet of its own running the tests' sample app, cold deploy, then a changed release."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from fleetctl.bench.support import BENCH_DIR, ROOT, down, fleetctl_command, timed, up

NAME = "rb"
SAMPLE_APP = ROOT / "tests" / "release" / "sample-app"


def _app(release: str) -> Path:
    """The sample app in the bench directory, its task returning release."""
    target = BENCH_DIR / f"{NAME}-app"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(SAMPLE_APP, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    tasks = target / "shipyard" / "tasks.py"
    tasks.write_text(tasks.read_text().replace('RELEASE = "v1"', f'RELEASE = "{release}"'))
    return target


def _inventory(app: Path) -> Path:
    """One broker, two worker hosts (nodes celery and ship), beat on the second, deploying app."""
    path = BENCH_DIR / NAME / "hosts.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""all:
  children:
    rabbitmq:
      hosts:
        {NAME}-mq:
    celery_workers:
      vars:
        celery_worker_app_source: {app}
        celery_worker_app: shipyard.celery:app
        celery_worker_app_smoke_task: {{name: shipyard.tasks.quote, args: [1]}}
        celery_worker_nodes:
          - {{name: celery, queues: [celery], concurrency: 1}}
          - {{name: ship, queues: [shipping], concurrency: 2}}
      hosts:
        {NAME}-w1:
        {NAME}-w2:
    celery_beat:
      hosts:
        {NAME}-w2:
""")
    return path


def bench_release() -> list[tuple[str, str]]:
    """Cold deploy of the sample app (build, wheelhouse, 3 hosts), then a changed release host by host."""
    inventory = _inventory(_app("bench-1"))
    shutil.rmtree(ROOT / ".cache" / "releases" / NAME, ignore_errors=True)  # a cold build too
    try:
        boot = up(inventory)
        cold, _ = timed(["make", "--no-print-directory", "deploy", f"INVENTORY={inventory}"])
        warm, _ = timed(["make", "--no-print-directory", "deploy", f"INVENTORY={inventory}"])
        _app(f"bench-{int(time.time())}")
        whole, text = timed(fleetctl_command("release", "--inventory", str(inventory), "--format", "json"))
    finally:
        down(inventory)
    outcome = json.loads(text)
    rows = [("sandbox up, 3 hosts (not counted below)", f"{boot:.1f} s"),
            ("cold deploy of 3 hosts with the app's wheelhouse (build included)", f"{cold:.1f} s (target <= 60 s)"),
            ("warm deploy, unchanged app (changed=0)", f"{warm:.1f} s"),
            ("release of a changed app: build (app wheel, wheelhouse, import check)",
             f"{sum(b['seconds'] for b in outcome['builds']):.1f} s")]
    for host in outcome["hosts"]:
        seconds = host.get("seconds") or {}
        rows.append((f"  {host['host']}: install + switch, drained restart, gate",
                     f"{seconds.get('install', 0):.1f} s + {seconds.get('restart', 0):.1f} s + "
                     f"{seconds.get('gate', 0):.1f} s"))
    rows.append((f"whole rollout of {len(outcome['hosts'])} worker hosts (fleetctl release, all in)",
                 f"{whole:.1f} s (rollout {outcome['elapsed']:.1f} s; target <= 60 s)"))
    return rows
