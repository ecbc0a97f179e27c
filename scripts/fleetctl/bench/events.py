"""Benchmark of task events: end-to-end task rate with events on next to off, same fleet, same run.

``bench_events()`` deploys the default sandbox fleet (warm when it is up; Flower there consumes the
events), then on worker2 runs a throwaway node and a client per variant, in turn and twice each:
CELERY_TASK_EVENTS=1 (worker_send_task_events and task_send_sent_event, the fleet's default) and
CELERY_TASK_EVENTS=0. Tasks per second from the first send to the last result read back.
"""
from __future__ import annotations

import statistics

from fleetctl.bench.results import TASKS, task_rates
from fleetctl.bench.support import INVENTORY, deploy_default_fleet

HOST = "worker2"
ROUNDS = 2


def bench_events() -> list[tuple[str, str]]:
    """Task rate with events on and off (median of ROUNDS each, interleaved); target: on >= 0.9x off."""
    deploy_default_fleet()
    rates = task_rates(INVENTORY, HOST, {"on": {"CELERY_TASK_EVENTS": "1"}, "off": {"CELERY_TASK_EVENTS": "0"}},
                       rounds=ROUNDS)
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    ratio = on / off
    return [
        (f"{TASKS} add tasks on {HOST}, results read back, task events on (median of {ROUNDS})", f"{on:.0f} tasks/s"),
        (f"{TASKS} add tasks on {HOST}, results read back, task events off (median of {ROUNDS})", f"{off:.0f} tasks/s"),
        ("  events on / off (target >= 0.9x)", f"{ratio:.2f}x ({'met' if ratio >= 0.9 else 'NOT met'})"),
    ]
