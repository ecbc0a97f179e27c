"""`fleetctl broker restart`'s pure parts: when the cluster counts as degraded, and in what words."""
from __future__ import annotations

import json

from fleetctl import broker
from fleetctl import inventory as fleet
from fleetctl.remote.ssh import RunResult

CLUSTER = fleet.Fleet(hosts=tuple(fleet.Host(f"b{n}", f"10.0.0.{n}", ("rabbitmq",)) for n in (1, 2, 3)),
                      beat_host=None, broker_host="b1", broadcast_queues=("broadcast",),
                      broker_hosts=("b1", "b2", "b3"))
NODES = ["rabbit@b1", "rabbit@b2", "rabbit@b3"]


def _status(host: str, running=NODES, partitions=None, alarms=None) -> RunResult:
    return RunResult(host, exited=0, stdout=json.dumps({"disk_nodes": NODES, "running_nodes": list(running),
                                                        "partitions": partitions or {}, "alarms": alarms or []}))


def test_a_whole_cluster_has_no_degradation():
    assert broker.degradations(CLUSTER, {h: _status(h) for h in ("b1", "b2", "b3")}) == []


def test_a_node_down_a_partition_and_an_alarm_are_each_named():
    statuses = {
        "b1": _status("b1", running=NODES[:2], alarms=[{"resource_limit": "disk"}]),
        "b2": _status("b2", partitions={"rabbit@b2": ["rabbit@b1"]}),
        "b3": RunResult("b3", error="no SSH connection within 5 s", down=True),
    }
    problems = broker.degradations(CLUSTER, statuses)
    assert "b3: broker not running or not answering: no SSH connection within 5 s" in problems
    assert "b1: 2 of 3 nodes running (not running: rabbit@b3)" in problems
    assert any(p.startswith("b1: alarms: ") and "disk" in p for p in problems)
    assert any(p.startswith("b2: network partition: ") for p in problems)


def test_each_step_is_bounded_and_runs_the_cli_as_rabbitmq():
    for step, _ in broker.STEPS:
        command = broker._step_command(step, 120)
        assert command.startswith("timeout -k 5 120 ")
        if step != "restart":
            assert "setpriv --reuid=rabbitmq" in command
    assert broker._step_command("quorum", 120).endswith("await_online_quorum_plus_one -t 120")
