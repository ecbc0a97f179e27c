"""Benchmark of task events: end-to-end task rate with events on next to off, same fleet, same run.

``bench_events()`` deploys the default sandbox fleet (warm when it is up), then on worker2 runs a
throwaway node and a client per variant, in turn, ROUNDS times each: CELERY_TASK_EVENTS=1
(worker_send_task_events and task_send_sent_event, the fleet's default) and CELERY_TASK_EVENTS=0.
Tasks per second from the first send to the last result read back. Two sets: with nothing consuming
the events (what sending them costs the publisher, the node and the broker), then with the fleet's
Flower consuming them, with the CPU time Flower spent meanwhile. Every sandbox host shares the
controller's cores: Flower's CPU is taken from the nodes and the broker, which a Flower host of its
own would not do.
"""
from __future__ import annotations

import statistics

from fleetctl.bench.results import TASKS, task_rates
from fleetctl.bench.support import INVENTORY, deploy_default_fleet, run_on

HOST = "worker2"
FLOWER_HOST = "worker2"  # group flower of the default sandbox inventory
ROUNDS = 5  # the sandbox shares 2 cores: single runs vary by a third
_VARIANTS = {"on": {"CELERY_TASK_EVENTS": "1"}, "off": {"CELERY_TASK_EVENTS": "0"}}
# CPU seconds (user + system) of Flower's main process so far.
_FLOWER_CPU = ("pid=$(systemctl show -P MainPID flower.service) && [ \"$pid\" -gt 0 ] && "
               "awk -v hz=\"$(getconf CLK_TCK)\" '{print ($14 + $15) / hz}' /proc/$pid/stat")


def _ratio(rates: dict[str, list[float]]) -> tuple[float, float, float]:
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    return on, off, on / off


def bench_events() -> list[tuple[str, str]]:
    """Task rate with events on and off (median of ROUNDS each, interleaved), without and with Flower
    consuming them; target: on >= 0.9x off."""
    deploy_default_fleet()
    run_on(INVENTORY, FLOWER_HOST, "systemctl stop flower.service", "stopping Flower")
    try:
        alone = _ratio(task_rates(INVENTORY, HOST, _VARIANTS, rounds=ROUNDS))
    finally:
        run_on(INVENTORY, FLOWER_HOST, "systemctl start flower.service && sleep 3", "starting Flower")
    before = float(run_on(INVENTORY, FLOWER_HOST, _FLOWER_CPU, "reading Flower's CPU time"))
    consumed = _ratio(task_rates(INVENTORY, HOST, _VARIANTS, rounds=ROUNDS))
    flower_cpu = float(run_on(INVENTORY, FLOWER_HOST, _FLOWER_CPU, "reading Flower's CPU time")) - before
    what = f"{TASKS} add tasks on {HOST}, results read back, median of {ROUNDS}"
    return [
        (f"{what}, no event consumer: events on", f"{alone[0]:.0f} tasks/s"),
        (f"{what}, no event consumer: events off", f"{alone[1]:.0f} tasks/s"),
        ("  events on / off (target >= 0.9x)", f"{alone[2]:.2f}x ({'met' if alone[2] >= 0.9 else 'NOT met'})"),
        (f"{what}, Flower consuming on {FLOWER_HOST}: events on", f"{consumed[0]:.0f} tasks/s"),
        (f"{what}, Flower consuming on {FLOWER_HOST}: events off", f"{consumed[1]:.0f} tasks/s"),
        ("  events on / off, Flower on the same cores", f"{consumed[2]:.2f}x"),
        (f"  Flower's CPU time over those {2 * ROUNDS} runs", f"{flower_cpu:.1f} s"),
    ]
