"""The health check on the deployed sandbox fleet: each fault is named, and each test undoes its fault.

The checks run `fleetctl health` and `fleetctl status` (what `make health` / `make status` run) with
--format json. Host metric thresholds are relaxed except where a test is about them: the sandbox hosts
share this machine's kernel and disk, so a busy or full test machine is not what these tests are about.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fleetctl import inventory as fleet_model
from fleetctl import sandbox
from support.fleet import RELAXED

ROOT = Path(__file__).resolve().parents[2]
FLEETCTL = ROOT / ".venv" / "bin" / "fleetctl"
FAB = ROOT / ".venv" / "bin" / "fab"
SHARED_INVENTORY = ROOT / "playbooks" / "inventories" / "sandbox" / "hosts.yml"
HOSTS = ("broker", "worker1", "worker2")
NODES = {"calc@worker1": "worker1", "reports@worker1": "worker1", "celery@worker2": "worker2"}
GUARD = 120  # seconds; against a hanging run, not a speed assertion
SETTLE = 120  # seconds to wait for the fleet to be healthy again after a fault is undone
DRAINED = "0 messages ready, 0 unacknowledged, 1 consumer"  # an idle queue of the sandbox (it serves queue metrics)


def _health(*args: str, verb: str = "health", inventory: Path = SHARED_INVENTORY,
            env: dict | None = None) -> tuple[int, dict]:
    proc = subprocess.run([str(FLEETCTL), verb, "--inventory", str(inventory), "--format", "json",
                           *RELAXED, *args], cwd=ROOT, capture_output=True, text=True, timeout=GUARD,
                          env={**os.environ, **(env or {})})
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def _rows(report: dict) -> dict[str, dict]:
    return {row["name"]: row for row in report["rows"]}


def _queue_row_until(queue: str, facts: str) -> tuple[int, dict]:
    """Bounded wait until health shows facts on the row of queue; the exit code and that row then (last seen)."""
    deadline = time.monotonic() + SETTLE
    while True:
        code, report = _health()
        row = _rows(report)[queue]
        if row["facts"] == [facts] or time.monotonic() > deadline:
            return code, row
        time.sleep(1)


def _wait_healthy() -> dict:
    """Bounded wait until the shared fleet is healthy (exit 0); the report then."""
    deadline = time.monotonic() + SETTLE
    while True:
        code, report = _health()
        if code == 0:
            return report
        assert time.monotonic() < deadline, f"fleet not healthy again:\n{json.dumps(report, indent=2)}"
        time.sleep(2)


def _wait_ok(row: str) -> None:
    """Bounded wait until health rates the row OK."""
    deadline = time.monotonic() + SETTLE
    while True:
        _, report = _health()
        if _rows(report)[row]["status"] == "OK":
            return
        assert time.monotonic() < deadline, f"{row} not OK again: {_rows(report)[row]}"
        time.sleep(2)


def _run(host, command: str) -> str:
    result = host.run(command)
    assert result.rc == 0, f"{command}: {result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def heartbeat_in(deployed_fleet):
    """Beat's first heartbeat is in: on a fleet just deployed, its beat host is WARN until then."""
    _wait_ok("worker2")


@pytest.fixture
def fleet(deployed_fleet, heartbeat_in):
    """The shared deployed fleet, healthy before the test and again after it."""
    _wait_healthy()
    yield deployed_fleet
    _wait_healthy()


@pytest.fixture(scope="module")
def celery_app(deployed_fleet):
    """A Celery app on the shared fleet's broker (for control commands)."""
    from celery import Celery

    url = fleet_model.load_fleet(SHARED_INVENTORY).broker_url
    assert url, "the shared fleet has no broker URL"
    return Celery("health-tests", broker=url, set_as_current=False)


def test_healthy_fleet_exits_0_with_every_host_and_node_ok(fleet):
    code, report = _health()
    rows = _rows(report)
    assert code == 0 and report["healthy"]
    assert [row["name"] for row in report["rows"]] == ["broker", "worker1", "calc@worker1", "reports@worker1",
                                                       "worker2", "celery@worker2", "calc", "celery", "reports"]
    assert [row["kind"] for row in report["rows"]][-3:] == ["queue"] * 3
    assert all(row["status"] in ("OK", "WARN") for row in report["rows"]), report
    assert all("pong" in rows[node]["facts"] and rows[node]["host"] == host for node, host in NODES.items())
    assert "queues calc, celery, broadcast" in rows["calc@worker1"]["facts"]


def test_text_table_names_every_host_and_node_and_says_healthy(fleet):
    proc = subprocess.run([str(FLEETCTL), "health", "--inventory", str(SHARED_INVENTORY), *RELAXED],
                          cwd=ROOT, capture_output=True, text=True, timeout=GUARD)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:-4]] == ["broker", "worker1", "calc@worker1", "reports@worker1",
                                                        "worker2", "celery@worker2"]
    assert [line.split()[:2] for line in lines[-4:-1]] == [["queue", "calc"], ["queue", "celery"], ["queue", "reports"]]
    assert lines[-1].startswith("HEALTHY: 3 hosts, 3 nodes, 3 queues")


def test_status_and_the_fabric_tasks_give_one_row_per_host(fleet):
    code, report = _health(verb="status")
    assert code == 0 and [row["name"] for row in report["rows"]] == [*HOSTS, "calc", "celery", "reports"]
    assert "2/2 nodes OK" in _rows(report)["worker1"]["facts"]
    for task in ("status", "health"):
        proc = subprocess.run([str(FAB), "-r", "scripts", task, "--inventory", str(SHARED_INVENTORY), "--format",
                               "json"], cwd=ROOT, capture_output=True, text=True, timeout=GUARD)
        assert proc.returncode in (0, 1), proc.stderr  # host metrics may WARN/FAIL on a busy machine
        names = [row["name"] for row in json.loads(proc.stdout)["rows"]]
        assert names == ([*HOSTS, "calc", "celery", "reports"] if task == "status" else
                         ["broker", "worker1", "calc@worker1", "reports@worker1", "worker2", "celery@worker2", "calc",
                          "celery", "reports"])


@contextlib.contextmanager
def _faulted(host, fault: str, repair: str):
    """(exit code, rows by name, report) of a health run with fault done on host; repair is run afterwards."""
    _run(host, fault)
    try:
        code, report = _health()
        yield code, _rows(report), report
    finally:
        _run(host, repair)


def test_stopped_celery_service_fails_its_host_and_its_node(fleet):
    with _faulted(fleet.host("worker2"), "systemctl stop celery", "systemctl start celery") as (code, rows, _):
        assert code == 1
        assert rows["worker2"]["status"] == "FAIL" and "celery.service inactive (dead)" in rows["worker2"]["reasons"]
        assert rows["celery@worker2"]["status"] == "FAIL"
        assert "no worker process on the host" in rows["celery@worker2"]["reasons"][0]
        assert rows["worker1"]["status"] == rows["calc@worker1"]["status"] == "OK"


def test_node_killed_with_sigkill_is_named(fleet):
    with _faulted(fleet.host("worker1"), "kill -9 $(cat /run/celery/reports.pid)",
                  "systemctl restart celery") as (code, rows, report):
        assert code == 1
        assert rows["reports@worker1"]["status"] == "FAIL"
        assert rows["reports@worker1"]["reasons"][0].startswith("no answer to ping within 2 s; no worker process")
        assert rows["calc@worker1"]["status"] == "OK"
        not_ok = {row["name"]: row["reasons"] for row in report["rows"] if row["status"] != "OK"}
        assert list(not_ok) == ["reports@worker1"], not_ok


def test_stopped_beat_is_flagged_on_the_beat_host(fleet):
    with _faulted(fleet.host("worker2"), "systemctl stop celerybeat", "systemctl start celerybeat") as (code, rows, _):
        assert code == 1
        assert rows["worker2"]["status"] == "FAIL"
        assert "celerybeat.service inactive (dead)" in rows["worker2"]["reasons"]


def test_queue_dropped_at_runtime_shows_as_drift(fleet, celery_app):
    answer = celery_app.control.cancel_consumer("calc", destination=["calc@worker1"], reply=True, timeout=5)
    assert answer == [{"calc@worker1": {"ok": "no longer consuming from calc"}}]
    try:
        code, report = _health()
        row = _rows(report)["calc@worker1"]
        assert code == 1
        assert row["status"] == "FAIL" and row["reasons"] == ["queue drift: missing calc"]
    finally:
        celery_app.control.add_consumer("calc", destination=["calc@worker1"], reply=True, timeout=5)


def test_a_backlog_on_a_queue_without_consumers_fails_naming_it_until_it_drains(fleet, celery_app):
    """500 messages on `reports` with its only consumer cancelled: FAIL naming the queue; consumers back, OK."""
    answer = celery_app.control.cancel_consumer("reports", destination=["reports@worker1"], reply=True, timeout=5)
    assert answer == [{"reports@worker1": {"ok": "no longer consuming from reports"}}]
    try:
        with celery_app.producer_or_acquire() as producer:
            for _ in range(500):
                celery_app.send_task("celery_app.tasks.examples.add", (1, 1), queue="reports", producer=producer,
                                     ignore_result=True)
        code, report = _health()
        row = _rows(report)["reports"]
        assert code == 1 and row["kind"] == "queue" and row["status"] == "FAIL"
        assert row["reasons"] == ["500 messages ready and no consumer"]
        text = subprocess.run([str(FLEETCTL), "health", "--inventory", str(SHARED_INVENTORY), *RELAXED], cwd=ROOT,
                              capture_output=True, text=True, timeout=GUARD).stdout
        assert any(line.split()[:3] == ["queue", "reports", "FAIL"] for line in text.splitlines()), text
    finally:
        celery_app.control.add_consumer("reports", destination=["reports@worker1"], reply=True, timeout=5)
    code, row = _queue_row_until("reports", DRAINED)  # the node drains the backlog
    assert code == 0 and row["status"] == "OK" and row["facts"] == [DRAINED], row


def test_a_task_in_progress_counts_as_unacknowledged_on_its_queue(fleet, celery_app):
    """The sandbox broker serves its queue metrics (it has a monitoring host): health shows unacknowledged messages.

    reports@worker1 runs one task at a time with a prefetch of one: the first report runs (acknowledged early, as
    `report` is), the second waits on the node, delivered and not yet acknowledged."""
    for n in (1, 2):
        celery_app.send_task("celery_app.tasks.examples.report", (f"unacked {n}", 10), queue="reports",
                             ignore_result=True)
    _, row = _queue_row_until("reports", "0 messages ready, 1 unacknowledged, 1 consumer")  # figures 5 s old at most
    assert row["status"] == "OK" and row["facts"] == ["0 messages ready, 1 unacknowledged, 1 consumer"], row
    _, row = _queue_row_until("reports", DRAINED)  # both reports done: nothing left unacknowledged
    assert row["facts"] == [DRAINED], row


def test_node_the_inventory_does_not_know_is_flagged(fleet):
    worker2 = fleet.host("worker2")
    # Consumes only a queue of its own, so it takes no task of the fleet while it runs.
    _run(worker2, "cd /tmp && . /etc/conf.d/celery && runuser -u celery -- $CELERY_BIN -A $CELERY_APP worker"
                  " -n stray@worker2 -Q health-stray -c 1 --detach --pidfile=/tmp/stray.pid --logfile=/tmp/stray.log")
    try:
        deadline = time.monotonic() + 30
        while "stray@worker2" not in _rows(_health()[1]):
            assert time.monotonic() < deadline, "stray node never seen"
            time.sleep(1)
        code, report = _health()
        row = _rows(report)["stray@worker2"]
        assert code == 1
        assert row["host"] == "worker2" and row["status"] == "FAIL"
        assert row["reasons"][0].startswith("unexpected node: not in the inventory (pid ")
    finally:
        worker2.run("pkill -F /tmp/stray.pid; "
                    "for i in $(seq 60); do [ -e /tmp/stray.pid ] || break; sleep 0.5; done; rm -f /tmp/stray.log")
        fleet.host("broker").run("rabbitmqctl -q -p celery delete_queue health-stray")


def test_metric_over_its_threshold_is_flagged_and_warn_alone_stays_healthy(fleet):
    code, report = _health("--disk-warn", "1", "--disk-fail", "2")
    assert code == 1
    for host in HOSTS:
        row = _rows(report)[host]
        assert row["status"] == "FAIL"
        assert any(reason.startswith("disk / ") and reason.endswith("(>= 2%)") for reason in row["reasons"]), row
    code, report = _health("--disk-warn", "1", "--disk-fail", "100")
    assert code == 0 and {_rows(report)[host]["status"] for host in HOSTS} == {"WARN"}


def test_missing_inventory_is_a_usage_error():
    proc = subprocess.run([str(FLEETCTL), "health", "--inventory", "/nonexistent/hosts.yml"],
                          cwd=ROOT, capture_output=True, text=True, timeout=GUARD)
    assert proc.returncode == 2 and "/nonexistent/hosts.yml" in proc.stderr


@pytest.mark.fleet("bare")
def test_powered_off_host_is_down_and_the_run_still_ends(deployed_fleet, fleet_pool):
    """The bare fleet (never deployed), checked against the shared broker; one host is killed, then replaced."""
    bare = fleet_pool.get("bare")
    env = {"CELERY_BROKER_URL": fleet_model.load_fleet(SHARED_INVENTORY).broker_url}
    code, report = _health(inventory=bare.inventory, env=env)
    rows = _rows(report)
    assert code == 1  # never deployed: no celery.service, no node answers
    assert rows["node-a"]["status"] == rows["node-b"]["status"] == "FAIL"

    try:
        fid = sandbox.fleet_id(bare.inventory)
        os.kill(sandbox.container_inits()[(fid, "node-b")], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while (fid, "node-b") in sandbox.container_inits():
            assert time.monotonic() < deadline, "node-b did not power off"
            time.sleep(0.2)

        code, report = _health(inventory=bare.inventory, env=env)
        rows = _rows(report)
        assert code == 1 and report["status"] == "DOWN"
        assert rows["node-b"]["status"] == "DOWN"
        assert rows["node-b"]["reasons"][0].startswith("unreachable over SSH: ")
        assert rows["celery@node-b"]["status"] == "DOWN"
        assert rows["node-a"]["status"] == "FAIL"  # the other host's probe still came back
        assert report["bound"] == 5.0
    finally:  # the bare fleet's other tests (tests/sandbox) find every host up again
        assert bare.make("sandbox-up").returncode == 0
