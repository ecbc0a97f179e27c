"""Changing the inventory and deploying again: only the hosts concerned change, and their services follow.

Each test deploys an edited copy of the sandbox inventory (same hosts, see write_inventory), checks
the fleet, and deploys the sandbox inventory again to restore it for the other tests.
"""

from __future__ import annotations

import copy

import pytest

from support.deploy import (
    active_queues,
    changed_tasks,
    deploy,
    host,
    pinged_nodes,
    recap,
    sandbox_inventory,
    write_inventory,
)

CHANGED_NODES = [{"name": "calc", "queues": ["calc"], "concurrency": 3}]


def _changed(summary: dict[str, dict[str, int]]) -> set[str]:
    return {h for h, s in summary.items() if s["changed"]}


# Whether the sandbox hosts may differ from the sandbox inventory (an edited copy was written since
# the last restore): the fixture then restores them after the test.
_EDITED = {"since_restore": False}


def _restore() -> dict[str, dict[str, int]]:
    run = deploy()
    assert run.returncode == 0, run.stdout[-3000:]
    _EDITED["since_restore"] = False
    return recap(run.stdout)


@pytest.fixture
def edited_inventory(deployed_fleet, tmp_path):
    """A function writing an edited copy of the sandbox inventory; the sandbox state is restored after
    (unless the test restored it itself since its last edit)."""
    written = []

    def edit(change) -> object:
        inventory = copy.deepcopy(sandbox_inventory())
        change(inventory["all"]["children"])
        written.append(write_inventory(tmp_path, inventory))
        _EDITED["since_restore"] = True
        return written[-1]

    yield edit
    if _EDITED["since_restore"]:
        _restore()


def test_changing_queues_and_removing_a_node_changes_only_that_host(edited_inventory):
    def change(groups):
        groups["celery_workers"]["hosts"]["worker1"]["celery_worker_nodes"] = CHANGED_NODES

    run = deploy(edited_inventory(change))
    assert run.returncode == 0, run.stdout[-3000:]
    assert _changed(recap(run.stdout)) == {"worker1"}

    worker1 = host("worker1")
    assert active_queues(worker1, ["calc@worker1"])["calc@worker1"] == {"calc", "broadcast"}
    assert "reports@worker1" not in pinged_nodes(worker1)
    assert not worker1.file("/run/celery/reports.pid").exists
    assert not worker1.service("celery@reports").is_running
    assert not worker1.service("celery@reports").is_enabled
    stats = worker1.check_output(". /etc/conf.d/celery && $CELERY_BIN -A $CELERY_APP inspect stats --json "
                                 "-d calc@worker1 --timeout 5")
    assert '"max-concurrency": 3' in stats

    restored = _restore()
    assert _changed(restored) == {"worker1"}
    assert {"calc@worker1", "reports@worker1"} <= pinged_nodes(worker1)
    assert worker1.service("celery@reports").is_enabled
    assert active_queues(worker1, ["calc@worker1"])["calc@worker1"] == {"calc", "celery", "broadcast"}


def test_moving_beat_to_another_host_stops_it_on_the_former_beat_host(edited_inventory):
    def change(groups):
        groups["celery_beat"]["hosts"] = {"worker1": None}

    run = deploy(edited_inventory(change))
    assert run.returncode == 0, run.stdout[-3000:]
    assert _changed(recap(run.stdout)) == {"worker1", "worker2"}

    worker1, worker2 = host("worker1"), host("worker2")
    assert worker1.service("celerybeat").is_enabled and worker1.service("celerybeat").is_running
    assert not worker2.service("celerybeat").is_running
    assert not worker2.file("/etc/systemd/system/celerybeat.service").exists
    assert worker2.service("celery").is_running

    _restore()
    assert worker2.service("celerybeat").is_running
    assert not worker1.service("celerybeat").is_running
    assert not worker1.file("/etc/systemd/system/celerybeat.service").exists


FLOWER_PATHS = ("/etc/systemd/system/flower.service", "/etc/conf.d/flower", "/etc/flower", "/var/lib/flower",
                "/opt/flower")
METRICS_PATHS = ("/etc/systemd/system/celery-fleet-metrics.timer", "/etc/systemd/system/celery-fleet-metrics.service",
                 "/var/lib/prometheus/node-exporter/celery_fleet.prom")


def test_hosts_that_leave_groups_flower_and_monitoring_keep_nothing_of_them(edited_inventory):
    def change(groups):
        del groups["flower"], groups["monitoring"]

    inventory = edited_inventory(change)
    worker1, worker2 = host("worker1"), host("worker2")  # monitoring host, Flower host

    checked = deploy(inventory, check=True)
    assert checked.returncode == 0, checked.stdout[-3000:]
    assert {"worker1", "worker2"} <= _changed(recap(checked.stdout))  # it tells what would go
    assert worker2.service("flower").is_running and worker1.service("prometheus").is_running  # and removes nothing

    run = deploy(inventory)
    assert run.returncode == 0, run.stdout[-3000:]
    flower = worker2.service("flower")
    assert not flower.is_running and not flower.is_enabled
    for path in FLOWER_PATHS:  # the unit, its password file, its state and its virtualenv
        assert not worker2.file(path).exists, path
    assert not worker2.user("flower").exists
    prometheus = worker1.service("prometheus")
    assert not prometheus.is_running and not prometheus.is_enabled
    assert not worker1.file("/etc/prometheus/fleet-rules.yml").exists
    for worker in (worker1, worker2):  # no monitoring host: no fleet metrics written
        assert not worker.service("celery-fleet-metrics.timer").is_running
        for path in METRICS_PATHS:
            assert not worker.file(path).exists, (worker.backend.hostname, path)
        assert worker.service("celery").is_running

    again = deploy(inventory)
    assert again.returncode == 0, again.stdout[-3000:]
    assert _changed(recap(again.stdout)) == set(), changed_tasks(again.stdout)

    _restore()
    assert worker2.service("flower").is_running and worker1.service("prometheus").is_running
    assert worker1.service("celery-fleet-metrics.timer").is_running
