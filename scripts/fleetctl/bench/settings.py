"""Benchmark of the fleet's safety settings next to stock Celery defaults, on one broker.

``settings_rows(inventory, host)`` runs on a deployed worker host (one classic broker), for each variant in
turn and ROUNDS times: a throwaway app of its own (one ``add`` task, no fleet part), a worker node of it
(concurrency 2, its own queue) and a client. The variants: stock Celery defaults; the fleet's
``SAFETY_DEFAULTS`` (publisher confirms, prefetch 1, JSON only, ...) with one confirm waited for per task;
the same settings with the client sending through ``celery_app.publish.confirmed_batch`` (confirms kept,
waited for once at the end). Each client first publishes TASKS tasks to a queue nobody consumes (publishes
per second), then sends TASKS tasks to the node and reads every result back (tasks per second).
"""
from __future__ import annotations

import json
import statistics

from fleetctl.bench.results import TASKS
from fleetctl.bench.support import run_script

ROUNDS = 2
VARIANTS = {"stock": ("stock", False), "fleet": ("fleet", False), "fleet-batch": ("fleet", True)}

# Run on the worker host with /etc/conf.d/celery sourced; prints one JSON object: label -> [[publish, e2e], ...].
_SCRIPT = r"""
import json, os, subprocess, sys, tempfile, time
tasks, rounds, variants = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
root = tempfile.mkdtemp(prefix="bench-settings-")
with open(os.path.join(root, "benchapp.py"), "w") as module:
    module.write(
        "import os\nfrom celery import Celery\n"
        "app = Celery('benchapp', broker=os.environ['CELERY_BROKER_URL'],\n"
        "             backend=os.environ['CELERY_RESULT_BACKEND'])\n"
        "if os.environ['BENCH_SETTINGS'] == 'fleet':\n"
        "    from celery_app.fleet import SAFETY_DEFAULTS\n"
        "    app.conf.update(SAFETY_DEFAULTS)\n"
        "@app.task\ndef add(x, y):\n    return x + y\n")
client = (
    "import sys, time\nfrom benchapp import app, add\n"
    "n, queue, batch = int(sys.argv[1]), sys.argv[2], sys.argv[3] == '1'\n"
    "from contextlib import nullcontext\nfrom celery_app.publish import confirmed_batch\n"
    "def producer():\n    return confirmed_batch(app) if batch else nullcontext(None)\n"
    "started = time.monotonic()\n"
    "with producer() as p:\n"
    "    for i in range(n):\n"
    "        add.apply_async((i, 1), queue=queue + '-idle', ignore_result=True, producer=p)\n"
    "publish = n / (time.monotonic() - started)\n"
    "with app.connection_for_write() as conn:\n    conn.default_channel.queue_delete(queue + '-idle')\n"
    "started = time.monotonic()\n"
    "with producer() as p:\n"
    "    results = [add.apply_async((i, 1), queue=queue, producer=p) for i in range(n)]\n"
    "assert [r.get(timeout=120) for r in results] == [i + 1 for i in range(n)]\n"
    "print(publish, n / (time.monotonic() - started))\n"
)
celery = os.path.join(os.path.dirname(sys.executable), "celery")
rates = {label: [] for label in variants}
for _ in range(rounds):
  for label, (settings, batch) in variants.items():
    env = dict(os.environ, BENCH_SETTINGS=settings, PYTHONPATH=root)
    queue, node = "bench-settings-" + label, "bench-settings-" + label + "@%h"
    worker = subprocess.Popen([celery, "-A", "benchapp", "worker", "-Q", queue, "-c", "2", "-n", node,
                               "-l", "WARNING", "--without-gossip", "--without-mingle"], cwd=root, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        subprocess.run([celery, "-A", "benchapp", "inspect", "ping", "-d", node.replace("%h", os.uname().nodename)],
                       cwd=root, env=env, capture_output=True, timeout=60)
        time.sleep(2)
        done = subprocess.run([sys.executable, "-c", client, str(tasks), queue, "1" if batch else "0"], cwd=root,
                              env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            sys.exit(label + ": " + done.stderr[-2000:])
        rates[label].append([float(value) for value in done.stdout.split()])
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        with open(os.devnull, "w") as quiet:
            subprocess.run([celery, "-A", "benchapp", "purge", "-f", "-Q", queue], cwd=root, env=env,
                           stdout=quiet, stderr=quiet, timeout=60)
print(json.dumps(rates))
"""


def settings_rates(inventory, host_name: str, tasks: int = TASKS, rounds: int = ROUNDS) -> dict[str, list[list[float]]]:
    """Per variant, ROUNDS pairs (publishes per second, tasks per second end to end) on a deployed worker host."""
    out = run_script(inventory, host_name, _SCRIPT, str(tasks), str(rounds), json.dumps(VARIANTS),
                     exports="CELERY_BROKER_URL CELERY_RESULT_BACKEND", what="settings bench")
    return json.loads(out.strip().splitlines()[-1])


def settings_rows(inventory, host_name: str) -> list[tuple[str, str]]:
    """Rows: stock, fleet and fleet with a confirmed batch; each fleet variant / stock (target >= 0.7x)."""
    rates = settings_rates(inventory, host_name)
    medians = {label: [statistics.median(pair[i] for pair in pairs) for i in (0, 1)] for label, pairs in rates.items()}
    words = {"stock": "stock Celery defaults", "fleet": "fleet settings, a confirm per task",
             "fleet-batch": "fleet settings, confirmed_batch"}
    rows = []
    for index, (what, unit) in enumerate((("publishes", "publishes/s"), ("add tasks end to end", "tasks/s"))):
        stock = medians["stock"][index]
        for label in VARIANTS:
            rows.append((f"{TASKS} {what}, {words[label]} (one broker, median of {ROUNDS})",
                         f"{medians[label][index]:.0f} {unit}"))
            if label != "stock" and index == 1:
                ratio = medians[label][index] / stock
                rows.append((f"  {words[label]} / stock (target >= 0.7x)",
                             f"{ratio:.2f}x ({'met' if ratio >= 0.7 else 'NOT met'})"))
    return rows
