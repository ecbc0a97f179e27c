"""A configuration change rolls over the worker hosts: one batch at a time, drained first, verified after.

While the deploy changes one node's concurrency on every worker host, a steady stream of tasks goes to a
queue that both worker hosts serve; the test watches the queue's consumer count through the broker the
whole time. Afterwards the fleet is deployed back to the sandbox inventory (rolling again).
"""
from __future__ import annotations

import copy
import threading
import time
import uuid

import pytest

from fleetctl.inventory import load_fleet
from support.deploy import SANDBOX_INVENTORY, deploy, host, recap, sandbox_inventory, write_inventory

RECORD = "celery_app.tasks.examples.record"
RECORDS = "/var/lib/celery/records"
QUEUE = "celery"  # consumed by calc@worker1 and celery@worker2
RATE = 20  # tasks per second
GUARD = 300  # seconds for every task to complete (a bound against hanging)


def _changed_inventory() -> dict:
    document = copy.deepcopy(sandbox_inventory())
    workers = document["all"]["children"]["celery_workers"]["hosts"]
    workers["worker1"]["celery_worker_nodes"][0]["concurrency"] = 3
    workers["worker2"] = {"celery_worker_nodes": [{"name": "celery", "queues": ["celery"], "concurrency": 3}]}
    return document


class Watch:
    """A publisher of record tasks and a watcher of the queue's consumers, in two threads."""

    def __init__(self, url: str, ledger: str):
        from celery import Celery

        self.url, self.ledger = url, ledger
        self.app = Celery("rolling-tests", broker=url, set_as_current=False)
        self.app.conf.update(accept_content=["json"], broker_connection_timeout=3)
        self.sent: list[str] = []
        self.consumers: list[int] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._publish, daemon=True),
                        threading.Thread(target=self._watch, daemon=True)]

    def _publish(self) -> None:
        with self.app.producer_or_acquire() as producer:
            while not self.stop.is_set():
                task_id = f"{self.ledger}-{len(self.sent):05d}"
                self.app.send_task(RECORD, args=(self.ledger, 0.05), queue=QUEUE, task_id=task_id,
                                   ignore_result=True, producer=producer)
                self.sent.append(task_id)
                time.sleep(1 / RATE)

    def _watch(self) -> None:
        from kombu import Connection

        with Connection(self.url, connect_timeout=3) as conn:
            channel = conn.channel()
            while not self.stop.is_set():
                self.consumers.append(channel.queue_declare(QUEUE, passive=True).consumer_count)
                time.sleep(0.05)

    def __enter__(self) -> Watch:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        self.app.close()


def _completed(ledger: str) -> set[str]:
    done: set[str] = set()
    for name in ("worker1", "worker2"):
        out = host(name).run(f"cat {RECORDS}/{ledger}.log 2>/dev/null").stdout
        done.update(line.split()[0] for line in out.splitlines() if line.strip())
    return done


@pytest.fixture
def restored(deployed_fleet):
    """The shared fleet is deployed back to the sandbox inventory afterwards."""
    yield
    back = deploy()
    assert back.returncode == 0, back.stdout[-3000:]


def _main_pids() -> dict[str, str]:
    units = {"worker1": ("calc", "reports"), "worker2": ("celery",)}
    return {f"{node}@{name}": host(name).check_output(f"systemctl show -p MainPID --value celery@{node}.service")
            for name, nodes in units.items() for node in nodes}


def test_check_mode_of_a_config_change_restarts_nothing(deployed_fleet, tmp_path):
    before = _main_pids()
    checked = deploy(write_inventory(tmp_path, _changed_inventory()), check=True)
    assert checked.returncode == 0, checked.stdout[-4000:]
    assert recap(checked.stdout)["worker1"]["changed"] > 0  # it tells what would change
    assert "batch 1:" not in checked.stdout and _main_pids() == before


def test_config_change_rolls_host_by_host_and_the_queue_never_loses_its_consumers(restored, tmp_path):
    url = load_fleet(SANDBOX_INVENTORY).broker_url
    inventory = write_inventory(tmp_path, _changed_inventory())
    ledger = f"rolling-{uuid.uuid4().hex[:12]}"
    with Watch(url, ledger) as watch:
        time.sleep(2)  # the stream and the watch are running before the deploy starts
        deployed = deploy(inventory)
        time.sleep(2)
    assert deployed.returncode == 0, deployed.stdout[-4000:]
    assert recap(deployed.stdout)["worker1"]["changed"] > 0 and recap(deployed.stdout)["worker2"]["changed"] > 0
    out = deployed.stdout
    assert out.index("batch 1: worker1") < out.index("worker1: verified") < out.index("batch 2: worker2")
    assert watch.consumers and min(watch.consumers) >= 1, f"the queue had no consumer at times: {watch.consumers}"
    deadline = time.monotonic() + GUARD
    while not set(watch.sent) <= _completed(ledger):
        assert time.monotonic() < deadline, f"{len(set(watch.sent) - _completed(ledger))} tasks never completed"
        time.sleep(3)
    for name in ("worker1", "worker2"):
        host(name).run(f"rm -f {RECORDS}/{ledger}.log")
