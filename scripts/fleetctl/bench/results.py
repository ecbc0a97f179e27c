"""Benchmark of tasks that store results: end-to-end rate with the Redis result backend next to rpc://.

``bench_results()`` boots and deploys a fleet of its own (one broker, one redis host, one worker host;
taken down afterwards),
then on the worker host runs, for each backend in turn, a throwaway worker node (concurrency 2, its own
queue, CELERY_RESULT_BACKEND set to that backend) and a client with the same backend that sends TASKS
``add`` tasks and reads every result back: tasks per second from the first send to the last result.
Same fleet, same host, same run; only the result backend differs.
"""
from __future__ import annotations

import json

from fleetctl.bench.support import BENCH_DIR, down, run_script, timed, up

TASKS = 500
NAME = "results"

# Run on the worker host as root, with /etc/conf.d/celery sourced; prints one JSON object: label -> rates.
# argv: tasks, rounds, then a JSON object label -> environment of that variant (on top of the host's).
_SCRIPT = r"""
import json, os, subprocess, sys, time
tasks, rounds, variants = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
rates = {label: [] for label in variants}
for _ in range(rounds):
  for label, overrides in variants.items():
    env = dict(os.environ, **overrides)
    queue, node = "bench-rates-" + label, "bench-" + label + "@%h"
    worker = subprocess.Popen([os.environ["CELERY_BIN"], "-A", "celery_app", "worker", "-Q", queue, "-c", "2",
                               "-n", node, "-l", "WARNING", "--without-gossip", "--without-mingle"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        subprocess.run([os.environ["CELERY_BIN"], "-A", "celery_app", "inspect", "ping", "-d",
                        node.replace("%h", os.uname().nodename)], env=env, capture_output=True, timeout=60)
        time.sleep(2)
        code = (
            "import sys, time\nfrom celery_app.app import app\n"
            "n, started = int(sys.argv[1]), time.monotonic()\n"
            "results = [app.send_task('celery_app.tasks.examples.add', (i, 1), queue=sys.argv[2]) for i in range(n)]\n"
            "assert [r.get(timeout=120) for r in results] == [i + 1 for i in range(n)]\n"
            "print(n / (time.monotonic() - started))\n"
        )
        done = subprocess.run([sys.executable, "-c", code, str(tasks), queue], env=env, capture_output=True,
                              text=True, timeout=600)
        if done.returncode != 0:
            sys.exit(label + ": " + done.stderr[-2000:])
        rates[label].append(float(done.stdout.strip()))
    finally:
        worker.terminate()
        worker.wait(timeout=60)
print(json.dumps(rates))
"""


def _inventory():
    path = BENCH_DIR / NAME / "hosts.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("all:\n  children:\n    rabbitmq:\n      hosts:\n        rs-mq:\n    redis:\n      hosts:\n"
                    "        rs-redis:\n    celery_workers:\n      hosts:\n        rs-w1:\n    celery_beat:\n"
                    "      hosts:\n        rs-w1:\n")
    return path


def task_rates(inventory, host_name: str, variants: dict[str, dict[str, str]], tasks: int = TASKS,
               rounds: int = 1) -> dict[str, list[float]]:
    """Tasks per second, send to result read back, per variant (environment on top of the host's), each
    run `rounds` times in turn on a throwaway node of a deployed worker host."""
    out = run_script(inventory, host_name, _SCRIPT, str(tasks), str(rounds), json.dumps(variants),
                     exports="CELERY_RESULT_BACKEND CELERY_BIN CELERY_TASK_EVENTS", what="bench")
    return json.loads(out.strip().splitlines()[-1])


def result_rates(inventory, host_name: str, tasks: int = TASKS) -> dict[str, float]:
    """Tasks per second, send to result read back, per backend ("redis", "rpc"), on a deployed worker host."""
    rates = task_rates(inventory, host_name, {"redis": {}, "rpc": {"CELERY_RESULT_BACKEND": "rpc://"}}, tasks)
    return {label: values[0] for label, values in rates.items()}


def bench_results() -> list[tuple[str, str]]:
    """End-to-end rate of tasks whose results are stored: Redis and rpc:// on the same fleet, same run."""
    inventory = _inventory()
    booted = up(inventory)
    deployed, _ = timed(["make", "--no-print-directory", "deploy", f"INVENTORY={inventory}"])
    try:
        rates = result_rates(inventory, "rs-w1")
    finally:
        down(inventory)
    return [
        ("results fleet: sandbox up, deploy", f"{booted:.1f} s, {deployed:.1f} s"),
        (f"{TASKS} add tasks, results read back, Redis backend", f"{rates['redis']:.0f} tasks/s"),
        (f"{TASKS} add tasks, results read back, rpc://", f"{rates['rpc']:.0f} tasks/s"),
        ("Redis / rpc://", f"{rates['redis'] / rates['rpc']:.2f}x"),
    ]
