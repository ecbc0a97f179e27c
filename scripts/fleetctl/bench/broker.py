"""Benchmark of the broker cluster: a 3-node quorum cluster next to one classic broker, and its rolling restart.

``bench_broker()`` boots and deploys two fleets of its own, side by side (same machine, same run): one broker
host and one worker host (classic queues), and three broker hosts and one worker host (quorum queues). On
each worker host, with the fleet's own settings (/etc/conf.d/celery: publisher confirms, prefetch 1):
publishes per second (TASKS tasks sent with confirms to a queue nobody consumes, then deleted), and the
end-to-end rate (bench.results: a throwaway node, tasks sent and every result read back). Then the time of
`fleetctl broker restart` of the three idle cluster nodes. Both fleets are taken down afterwards. On the
single broker's worker host, the fleet's settings next to stock Celery defaults (``bench.settings``).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from fleetctl.bench.results import TASKS, task_rates
from fleetctl.bench.settings import settings_rows
from fleetctl.bench.support import BENCH_DIR, BenchError, down, fleetctl_command, run_script, timed, up

ROUNDS = 2
# On the worker host, /etc/conf.d/celery sourced: publishes per second with the fleet's app, confirms on.
_PUBLISH = r"""
import sys, time
from celery_app.app import app
n, rounds, queue = int(sys.argv[1]), int(sys.argv[2]), "bench-publish"
rates = []
with app.connection_for_write() as conn:
    for _ in range(rounds):
        with app.producer_or_acquire() as producer:
            started = time.monotonic()
            for i in range(n):
                app.send_task("celery_app.tasks.examples.add", (i, 1), queue=queue, ignore_result=True,
                              producer=producer)
            rates.append(n / (time.monotonic() - started))
    conn.default_channel.queue_delete(queue)
print(" ".join(f"{rate:.1f}" for rate in rates))
"""


def _inventory(name: str, brokers: int) -> Path:
    path = BENCH_DIR / name / "hosts.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    hosts = "".join(f"        {name}-b{n}:\n" for n in range(1, brokers + 1))
    path.write_text(f"all:\n  children:\n    rabbitmq:\n      hosts:\n{hosts}    celery_workers:\n      hosts:\n"
                    f"        {name}-w1:\n    celery_beat:\n      hosts:\n        {name}-w1:\n")
    return path


def publish_rates(inventory, host_name: str, tasks: int = TASKS, rounds: int = ROUNDS) -> list[float]:
    """Publishes per second with confirms, from the fleet's app on a deployed worker host."""
    out = run_script(inventory, host_name, _PUBLISH, str(tasks), str(rounds),
                     exports="CELERY_BROKER_URL CELERY_QUEUE_TYPE", what="publish bench")
    return [float(value) for value in out.split()]


def bench_broker() -> list[tuple[str, str]]:
    """Cluster next to single broker: publish and end-to-end rates (target cluster >= 0.5x); broker restart time."""
    single, cluster = _inventory("bsingle", 1), _inventory("bcluster", 3)
    rows = []
    try:
        for name, inventory in (("single", single), ("cluster", cluster)):
            booted = up(inventory)
            deployed, _ = timed(["make", "--no-print-directory", "deploy", f"INVENTORY={inventory}"])
            rows.append((f"{name} fleet: sandbox up, deploy", f"{booted:.1f} s, {deployed:.1f} s"))
        figures = {}
        for name, inventory in (("single", single), ("cluster", cluster)):
            prefix = "bsingle" if name == "single" else "bcluster"
            figures[name] = (statistics.median(publish_rates(inventory, f"{prefix}-w1")),
                             statistics.median(task_rates(inventory, f"{prefix}-w1", {"rate": {}},
                                                          rounds=ROUNDS)["rate"]))
        for index, what in enumerate(("publishes with confirms", "add tasks end to end, results read back")):
            s, c = figures["single"][index], figures["cluster"][index]
            unit = "publishes/s" if index == 0 else "tasks/s"
            rows += [(f"{TASKS} {what}, one classic broker (median of {ROUNDS})", f"{s:.0f} {unit}"),
                     (f"{TASKS} {what}, 3-node quorum cluster (median of {ROUNDS})", f"{c:.0f} {unit}"),
                     ("  cluster / single (target >= 0.5x)", f"{c / s:.2f}x ({'met' if c / s >= 0.5 else 'NOT met'})")]
        rows += settings_rows(single, "bsingle-w1")
        seconds, out = timed(fleetctl_command("broker", "restart", "--inventory", str(cluster), "--format", "json"))
        if not json.loads(out).get("ok"):  # timed() raises already when it exits non-zero
            raise BenchError(f"fleetctl broker restart failed:\n{out[-2000:]}")
        rows.append(("fleetctl broker restart, 3 idle nodes (target <= 180 s)",
                     f"{seconds:.1f} s ({'met' if seconds <= 180 else 'NOT met'})"))
    finally:
        for inventory in (single, cluster):
            down(inventory)
    return rows
