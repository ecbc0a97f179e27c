"""Restarts and power cuts that lose nothing, on the shared deployed sandbox fleet (one celery@<node> unit per node).

Every test leaves the fleet as it found it: all nodes running and answering ping with their queues.
The waits are bounded guards against hanging (and, for a killed node, the 30 s the spec allows), not
speed measurements (`make bench` measures speed).
"""
from __future__ import annotations

import functools
import json
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml

from fleetctl import inventory as fleet_model
from fleetctl import restart
from fleetctl.cli.restart import describe_finding
from support.fleet import Fleet, wait_active

ROOT = Path(__file__).resolve().parents[2]
FLEETCTL = ROOT / ".venv" / "bin" / "fleetctl"
INVENTORY = ROOT / "playbooks" / "inventories" / "sandbox" / "hosts.yml"
NODES = {"calc@worker1": "worker1", "reports@worker1": "worker1", "celery@worker2": "worker2"}
RECORD = "celery_app.tasks.examples.record"
RECORDS = "/var/lib/celery/records"
PING_AGAIN_WITHIN = 30  # seconds: the spec's bound for a killed node to answer ping again
SETTLE = 120  # seconds for the fleet to be whole again after a disruption (guard)
# The load test: TASKS record tasks of TASK_SECONDS each, spread over the queues in proportion to
# their consumers' pool processes (calc: calc@worker1 x2; celery: calc@worker1, celery@worker2 x2;
# reports: reports@worker1 x1). The 5 pool processes need at least TASKS * TASK_SECONDS / 5 = 40 s, so
# the backlog outlasts the disruptions, which follow each other as soon as the fleet is whole again.
TASKS, TASK_SECONDS = 2000, 0.1
SHARES = {"calc": 0.4, "celery": 0.4, "reports": 0.2}
COMPLETE_WITHIN = 420  # seconds (guard)


@pytest.fixture(scope="module")
def fleet(deployed_fleet):
    """The shared fleet, whole before the module; and whole again after it."""
    _wait_whole()
    yield deployed_fleet
    _wait_whole()


@pytest.fixture(scope="module")
def app(fleet):
    """A Celery app on the shared fleet's broker: sends record tasks and asks the nodes."""
    from celery import Celery

    url = _fleet().broker_url
    assert url, "the shared fleet has no broker URL"
    app = Celery("restart-tests", broker=url, set_as_current=False)
    app.conf.update(accept_content=["json"], broker_connection_timeout=3)
    yield app
    app.close()


@pytest.fixture
def ledger(fleet):
    """A fresh ledger name for record tasks; its files are removed afterwards."""
    name = f"restart-{uuid.uuid4().hex[:12]}"
    yield name
    for host in ("worker1", "worker2"):
        fleet.host(host).run(f"rm -f {RECORDS}/{name}.log")


# Helpers.

@functools.cache
def _fleet() -> fleet_model.Fleet:
    return fleet_model.load_fleet(INVENTORY)


def _whole() -> tuple[bool, dict[str, list[str]]]:
    """Whether every node answers ping with its queues and runs once, celery.service active (`fleetctl restart`'s
    check); and host -> its problems in words."""
    verdict = restart.verify(_fleet(), _fleet().workers, timeout=0.1, connect_timeout=3)
    problems = {host: [describe_finding(f) for f in findings] for host, findings in verdict.problems.items()}
    return verdict.healthy, problems


def _wait_whole(within: float = SETTLE) -> None:
    deadline = time.monotonic() + within
    while True:
        healthy, problems = _whole()
        if healthy:
            return
        assert time.monotonic() < deadline, f"fleet not whole again within {within} s: {problems}"
        time.sleep(2)


def _answers_ping(app, node: str) -> bool:
    return node in (app.control.inspect(destination=[node], timeout=1, limit=1).ping() or {})


def _main_pid(host, node: str) -> int:
    return int(host.check_output(f"systemctl show -p MainPID --value celery@{node.split('@')[0]}.service"))


def _send(app, ledger: str, queue: str, count: int, seconds: float, first: int = 0) -> list[str]:
    ids = [f"{ledger}-{queue}-{first + i:04d}" for i in range(count)]
    with app.producer_or_acquire() as producer:
        for task_id in ids:
            app.send_task(RECORD, args=(ledger, seconds), queue=queue, task_id=task_id, ignore_result=True,
                          producer=producer)
    return ids


def _records(fleet, ledger: str) -> Counter:
    """task id -> how many times a record task of ledger completed, over both worker hosts."""
    counts: Counter = Counter()
    for host in ("worker1", "worker2"):
        out = fleet.host(host).run(f"cat {RECORDS}/{ledger}.log 2>/dev/null").stdout
        counts.update(line.split()[0] for line in out.splitlines() if line.strip())
    return counts


def _wait_records(fleet, ledger: str, ids: list[str], within: float) -> Counter:
    deadline = time.monotonic() + within
    while True:
        counts = _records(fleet, ledger)
        if set(ids) <= set(counts):
            return counts
        assert time.monotonic() < deadline, f"{len(set(ids) - set(counts))} of {len(ids)} tasks never completed"
        time.sleep(3)


def _queue_depth(fleet, queue: str) -> int:
    out = fleet.host("broker").check_output("rabbitmqctl -q -p celery list_queues name messages_ready "
                                            "--no-table-headers")
    return next((int(n) for name, n in (line.split() for line in out.splitlines()) if name == queue), 0)


def _make_restart() -> subprocess.CompletedProcess:
    """`make restart` (`fleetctl restart` when the Makefile has no such target)."""
    if subprocess.run(["make", "-n", "restart"], cwd=ROOT, capture_output=True).returncode == 0:
        command = ["make", "--no-print-directory", "restart", f"INVENTORY={INVENTORY}"]
    else:
        command = [str(FLEETCTL), "restart", "--inventory", str(INVENTORY)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


# Tests.

def test_killed_node_answers_ping_again_within_30_seconds(fleet, app):
    worker1 = fleet.host("worker1")
    before = _main_pid(worker1, "calc@worker1")
    started = time.monotonic()
    worker1.run(f"kill -9 {before}")
    while not _answers_ping(app, "calc@worker1"):
        assert time.monotonic() - started < PING_AGAIN_WITHIN, "calc@worker1 did not answer ping within 30 s"
        time.sleep(0.5)
    assert _main_pid(worker1, "calc@worker1") not in (0, before)


def test_task_running_on_a_killed_node_is_delivered_again(fleet, app, ledger):
    worker1 = fleet.host("worker1")
    [task_id] = _send(app, ledger, "reports", 1, 6)
    wait_active(app, "reports@worker1", task_id)
    worker1.run(f"kill -9 {_main_pid(worker1, 'reports@worker1')}")
    assert _records(fleet, ledger)[task_id] == 0  # its pool process died with the node
    assert _wait_records(fleet, ledger, [task_id], SETTLE)[task_id] == 1
    _wait_whole()


def test_stop_lets_running_tasks_finish_keeps_the_rest_queued_and_leaves_no_process(fleet, app, ledger):
    worker1 = fleet.host("worker1")
    ids = _send(app, ledger, "reports", 4, 3)
    wait_active(app, "reports@worker1", ids[0])
    try:
        assert worker1.run("systemctl stop celery").rc == 0
        assert _records(fleet, ledger) == Counter({ids[0]: 1})  # finished before the stop returned
        assert _queue_depth(fleet, "reports") == 3  # the others wait in the queue
        assert worker1.run("pgrep -u celery -f 'celery .*worker'").rc == 1
        assert not worker1.service("celery@calc").is_running and not worker1.service("celery@reports").is_running
    finally:
        assert worker1.run("systemctl start celery").rc == 0
    assert _wait_records(fleet, ledger, ids, SETTLE) == Counter({task_id: 1 for task_id in ids})
    _wait_whole()


@pytest.mark.parametrize("content", ["dead", "another node's worker", "pid 1", "not a number"])
def test_stale_pid_file_does_not_block_the_start(fleet, app, content):
    worker1 = fleet.host("worker1")
    other = _main_pid(worker1, "reports@worker1")
    pid = {"dead": worker1.check_output("echo $(( $(cat /proc/sys/kernel/pid_max) - 1 ))"),
           "another node's worker": str(other), "pid 1": "1", "not a number": "garbage"}[content]
    assert worker1.run("systemctl stop celery@calc").rc == 0
    try:
        assert worker1.run(f"echo {pid} > /run/celery/calc.pid && chown celery:celery /run/celery/calc.pid").rc == 0
        start = worker1.run("systemctl start celery@calc")
        assert start.rc == 0, start.stderr
    finally:
        worker1.run("systemctl start celery@calc")
    assert _main_pid(worker1, "calc@worker1") == int(worker1.check_output("cat /run/celery/calc.pid"))
    assert _main_pid(worker1, "reports@worker1") == other  # the process the file named was left alone
    _wait_whole()


def test_reload_restarts_every_node_in_place_and_leaves_them_running(fleet, app):
    worker1 = fleet.host("worker1")
    units = ("celery@calc.service", "celery@reports.service")
    restarts = {unit: worker1.check_output(f"systemctl show -p NRestarts --value {unit}") for unit in units}
    before = {node: _main_pid(worker1, node) for node in ("calc@worker1", "reports@worker1")}
    assert worker1.run("systemctl reload celery").rc == 0
    deadline = time.monotonic() + SETTLE
    while any(worker1.run(f"systemctl show -p ActiveState --value {unit}").stdout.strip() != "active"
              or _main_pid(worker1, node) == before[node] for unit, node in zip(units, before)):
        assert time.monotonic() < deadline, "the nodes were not reloaded"
        time.sleep(1)
    _wait_whole()
    time.sleep(6)  # longer than RestartSec: a node that systemd had lost track of would be dead or restarted now
    for unit, node in zip(units, before):
        assert worker1.service(unit).is_running
        assert _main_pid(worker1, node) == int(worker1.check_output(f"cat /run/celery/{node.split('@')[0]}.pid"))
        assert worker1.check_output(f"systemctl show -p NRestarts --value {unit}") == restarts[unit]
    assert worker1.service("celery").is_running


def test_rolling_restart_stops_at_a_host_whose_nodes_do_not_come_back(fleet, tmp_path):
    # An inventory giving worker1 a node it does not run: that node never answers after the restart.
    document = yaml.safe_load(INVENTORY.read_text())
    nodes = document["all"]["children"]["celery_workers"]["hosts"]["worker1"]["celery_worker_nodes"]
    nodes.append({"name": "ghost", "queues": ["ghost"], "concurrency": 1})
    directory = tmp_path / "sandbox"  # same directory name: the same broker password (.secrets/sandbox)
    directory.mkdir()
    (directory / "hosts.yml").write_text(yaml.safe_dump(document, sort_keys=False))
    for name, variables in _connection_vars().items():
        (directory / "host_vars").mkdir(exist_ok=True)
        (directory / "host_vars" / f"{name}.yml").write_text(yaml.safe_dump(variables))
    proc = subprocess.run([str(FLEETCTL), "restart", "--inventory", str(directory / "hosts.yml"),
                           "--verify-timeout", "5", "--format", "json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    outcome = json.loads(proc.stdout)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    hosts = {host["host"]: host for host in outcome["hosts"]}
    assert outcome["stopped_at"] == ["worker1"]
    assert hosts["worker1"]["status"] == "FAIL"
    assert any(reason.startswith("ghost@worker1: no answer to ping") for reason in hosts["worker1"]["reasons"])
    assert hosts["worker2"]["status"] == "SKIPPED"
    _wait_whole()


def _connection_vars() -> dict[str, dict]:
    """The sandbox hosts' ansible_* variables (from the vars plugin), for an inventory in another directory."""
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible-inventory"), "-i", str(INVENTORY), "--list"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    hostvars = json.loads(out)["_meta"]["hostvars"]
    return {name: {k: v for k, v in variables.items() if k.startswith("ansible_")}
            for name, variables in hostvars.items()}


def test_restarts_kill_and_broker_restart_under_load_lose_no_task(fleet, app, ledger):
    worker1, worker2, broker = fleet.host("worker1"), fleet.host("worker2"), fleet.host("broker")
    ids = []
    for queue, share in SHARES.items():
        ids += _send(app, ledger, queue, int(TASKS * share), TASK_SECONDS)
    assert len(ids) == TASKS

    # kill -9 of a node's main process: its running tasks go back to the queue, the node comes back.
    _wait_active_any(app, "calc@worker1")
    assert worker1.run(f"kill -9 {_main_pid(worker1, 'calc@worker1')}").rc == 0
    _wait_whole()
    # systemctl restart of a whole host: warm, running tasks finish.
    assert worker2.run("systemctl restart celery").rc == 0
    _wait_whole()
    # RabbitMQ restart: durable queues and persistent messages survive, workers reconnect by themselves.
    pending = _queue_depth(fleet, "calc") + _queue_depth(fleet, "celery") + _queue_depth(fleet, "reports")
    assert pending > 0, "the backlog drained before the broker restart: the test would prove nothing"
    assert broker.run("systemctl restart rabbitmq-server").rc == 0
    _wait_whole()
    # Rolling restart of every worker host.
    rolled = _make_restart()
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr

    counts = _wait_records(fleet, ledger, ids, COMPLETE_WITHIN)
    duplicates = sum(count - 1 for task_id, count in counts.items() if task_id in set(ids))
    print(f"\n{TASKS} tasks, all completed; {pending} were still queued at the broker restart; "
          f"duplicates (ran more than once): {duplicates}")
    assert set(ids) <= set(counts)
    assert not set(counts) - set(ids)


def _wait_active_any(app, node: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not ((app.control.inspect(destination=[node], timeout=1, limit=1).active() or {}).get(node)):
        assert time.monotonic() < deadline, f"{node} never ran a task"
        time.sleep(0.3)


# Power cuts: the host stops at once, no service stops, and it boots again with its disk (`fleetctl sandbox
# poweroff/poweron`), as a real host after a power loss.

POWER_TASKS = 500  # persistent tasks waiting at the broker through its power cut


def _power(verb: str, host: str) -> None:
    proc = Fleet.named("sandbox").sandbox(verb, host)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _wait_service(host, unit: str, within: float = SETTLE) -> None:
    deadline = time.monotonic() + within
    while host.run(f"systemctl is-active {unit}").stdout.strip() != "active":
        assert time.monotonic() < deadline, f"{unit} not active within {within} s"
        time.sleep(1)


def test_broker_power_cut_keeps_every_task_published_with_confirms(fleet, ledger):
    """With the workers stopped, 500 tasks published with confirms wait on the broker's disk through a power cut."""
    from celery import Celery

    publisher = Celery("power-tests", broker=_fleet().broker_url, set_as_current=False)
    publisher.conf.update(broker_transport_options={"confirm_publish": True}, broker_connection_timeout=3)
    workers = [fleet.host(name) for name in ("worker1", "worker2")]
    try:
        for host in workers:
            assert host.run("systemctl stop celery").rc == 0
        assert fleet.host("worker2").run("systemctl stop celerybeat").rc == 0  # beat's heartbeat goes to celery
        before = sum(_queue_depth(fleet, queue) for queue in SHARES)  # a heartbeat a stopped node gave back
        ids = []
        for queue, share in SHARES.items():
            ids += _send(publisher, ledger, queue, int(POWER_TASKS * share), 0)
        publisher.close()
        assert len(ids) == POWER_TASKS
        after = sum(_queue_depth(fleet, queue) for queue in SHARES)
        assert after - before == POWER_TASKS  # all confirmed, none consumed
        _power("poweroff", "broker")
        _power("poweron", "broker")
        _wait_service(fleet.host("broker"), "rabbitmq-server")
    finally:
        for host in workers:
            host.run("systemctl start celery")
        fleet.host("worker2").run("systemctl start celerybeat")  # the beat host (celery_beat)
    counts = _wait_records(fleet, ledger, ids, COMPLETE_WITHIN)
    assert set(counts) == set(ids)
    _wait_whole()


def test_worker_host_power_cut_during_late_acked_tasks_completes_every_task(fleet, app, ledger):
    """Tasks running or prefetched on a host that loses power go back to the queue: each completes at least once."""
    ids = _send(app, ledger, "celery", 300, 0.2)  # calc@worker1 and celery@worker2 (two processes) share it
    deadline = time.monotonic() + SETTLE
    while not any(node.endswith("@worker2") for node in _nodes_that_recorded(fleet, ledger)):
        assert time.monotonic() < deadline, "worker2 never ran a task"
        time.sleep(0.5)
    done_before = len(_records(fleet, ledger))
    _power("poweroff", "worker2")
    _power("poweron", "worker2")  # its units start at boot: celery and beat, no manual step
    counts = _wait_records(fleet, ledger, ids, COMPLETE_WITHIN)
    duplicates = sum(count - 1 for count in counts.values())
    print(f"\n{len(ids)} tasks, all completed; {done_before} had completed before the cut; "
          f"duplicates (ran more than once): {duplicates}")
    assert set(counts) == set(ids)
    _wait_whole()


def _nodes_that_recorded(fleet, ledger: str) -> set[str]:
    nodes = set()
    for host in ("worker1", "worker2"):
        out = fleet.host(host).run(f"cat {RECORDS}/{ledger}.log 2>/dev/null").stdout
        nodes.update(line.split()[1] for line in out.splitlines() if len(line.split()) == 2)
    return nodes
