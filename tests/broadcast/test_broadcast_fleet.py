"""`make broadcast` end to end on the deployed sandbox fleet: every node's answer comes back."""

from __future__ import annotations

import json
import time

import pytest

from support.fleet import make

NODES = {"worker1": {"calc@worker1", "reports@worker1"}, "worker2": {"celery@worker2"}}


def _broadcast(task: str, *extra: str, check: bool = True) -> tuple[int, dict]:
    proc = make("broadcast", f"TASK={task}", "FORMAT=json", *extra, check=False)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def _wait_for_ping(host, nodes: set[str]) -> None:
    """Bounded wait until every node of a host answers ping again (restores the shared fleet)."""
    command = f". /etc/conf.d/celery && $CELERY_BIN -A $CELERY_APP inspect ping -t 2 -d {','.join(sorted(nodes))}"
    deadline = time.monotonic() + 60
    while host.run(command).rc != 0:
        assert time.monotonic() < deadline, f"{nodes} did not answer ping again"
        time.sleep(1)


def test_host_report_answers_from_every_node_grouped_by_host(deployed_fleet):
    _, outcome = _broadcast("host_report")
    assert outcome["ok"] and outcome["missing"] == [] and outcome["failed"] == []
    assert {host: set(nodes) for host, nodes in outcome["hosts"].items()} == NODES
    for host, nodes in outcome["hosts"].items():
        for node, answer in nodes.items():
            report = answer["result"]
            assert answer["status"] == "ok", answer
            assert report["hostname"] == host
            assert report["cpu_count"] >= 1
            assert any(node in json.dumps(p) for p in report["celery_processes"]), report["celery_processes"]


def test_nodes_of_a_stopped_host_are_reported_missing(deployed_fleet):
    worker2 = deployed_fleet.host("worker2")
    assert worker2.run("systemctl stop celery").rc == 0
    try:
        code, outcome = _broadcast("host_report", "TIMEOUT=3", check=False)
        assert code != 0
        assert outcome["missing"] == ["celery@worker2"]
        assert set(outcome["hosts"]["worker1"]) == NODES["worker1"]
        assert outcome["hosts"]["worker2"]["celery@worker2"]["status"] == "missing"
    finally:
        assert worker2.run("systemctl start celery").rc == 0
        _wait_for_ping(worker2, NODES["worker2"])


def test_unknown_task_is_refused_before_anything_is_sent(deployed_fleet):
    proc = make("broadcast", "TASK=no_such_task", check=False)
    assert proc.returncode == 2
    assert "no_such_task" in proc.stderr


@pytest.mark.parametrize("args", ["not json", "[1, 2", '"a string"'])
def test_malformed_args_are_refused_before_anything_is_sent(deployed_fleet, args):
    proc = make("broadcast", "TASK=host_report", f"ARGS={args}", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr


def test_cleanup_logs_removes_old_rotated_logs_on_every_host(deployed_fleet):
    for name in NODES:
        host = deployed_fleet.host(name)
        script = ("cd /var/log/celery && head -c 4096 /dev/zero > old.log.1 && head -c 1000 /dev/zero > old.log.2.gz"
                  " && touch -d '30 days ago' old.log.1 old.log.2.gz && head -c 10 /dev/zero > fresh.log.1"
                  " && chown celery:celery old.log.1 old.log.2.gz fresh.log.1")
        assert host.run(script).rc == 0
    _, outcome = _broadcast("cleanup_logs", 'ARGS={"days": 7}')
    freed = {node: a["result"]["bytes_freed"] for nodes in outcome["hosts"].values() for node, a in nodes.items()}
    # Nodes of one host share its log directory: the first to run frees the bytes, the others find nothing.
    assert sum(v for n, v in freed.items() if n.endswith("@worker1")) == 5096
    assert freed["celery@worker2"] == 5096
    for name in NODES:
        host = deployed_fleet.host(name)
        assert not host.file("/var/log/celery/old.log.1").exists
        assert not host.file("/var/log/celery/old.log.2.gz").exists
        assert host.file("/var/log/celery/fresh.log.1").exists
        assert host.run("ls /var/log/celery/*.log").rc == 0  # live logs are never touched
        host.run("rm -f /var/log/celery/fresh.log.1")
