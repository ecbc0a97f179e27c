"""`fleetctl restart` reports as it goes (json-lines events), and Ctrl-C leaves no host drained."""
from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from fleetctl.inventory import load_fleet
from fleetctl.restart import answered_with_queues
from support.fleet import wait_active

ROOT = Path(__file__).resolve().parents[2]
FLEETCTL = ROOT / ".venv" / "bin" / "fleetctl"
INVENTORY = ROOT / "playbooks" / "inventories" / "sandbox" / "hosts.yml"
RECORD = "celery_app.tasks.examples.record"
RECORDS = "/var/lib/celery/records"
GUARD = 300  # seconds (a bound against hanging, not a speed target)


@pytest.fixture(scope="module")
def fleet(deployed_fleet):
    yield load_fleet(INVENTORY)


@pytest.fixture(scope="module")
def app(fleet):
    from celery import Celery

    app = Celery("restart-progress-tests", broker=fleet.broker_url, set_as_current=False)
    app.conf.update(accept_content=["json"], broker_connection_timeout=3)
    yield app
    app.close()


def _restart(*args: str) -> subprocess.Popen:
    return subprocess.Popen([str(FLEETCTL), "restart", "--inventory", str(INVENTORY), "--format", "json-lines",
                             *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _whole_within(fleet, app, within: float = 60) -> bool:
    from fleetctl.remote.control import inspect_nodes

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        view = inspect_nodes(fleet.broker_url, fleet.node_names, 1.0, 3.0, time.monotonic() + 4)
        if answered_with_queues(fleet.nodes, view, fleet.broadcast_queues):
            return True
        time.sleep(1)
    return False


def test_restart_streams_drain_restart_and_verify_of_each_host_in_order_before_the_result(fleet, app):
    proc = _restart()
    out, err = proc.communicate(timeout=GUARD)
    assert proc.returncode == 0, out + err
    events = [json.loads(line) for line in out.splitlines()]
    assert events[-1]["event"] == "result" and events[-1]["ok"] is True
    assert [e["event"] for e in events].count("result") == 1
    for host in (h.name for h in fleet.workers):
        mine = [e["event"] for e in events if e.get("host") == host and e["event"] in ("drain", "restart", "verify")]
        assert mine == ["drain", "restart", "verify"], (host, events)
        positions = [i for i, e in enumerate(events) if e.get("host") == host]
        assert positions == sorted(positions) and max(positions) < len(events) - 1
    hosts_in_order = [e["host"] for e in events if e["event"] == "verify"]
    assert hosts_in_order == [h.name for h in fleet.workers]
    assert all(e["ok"] for e in events if e["event"] in ("restart", "verify"))


def test_ctrl_c_during_the_first_drain_gives_its_queues_back_and_exits_130(fleet, app):
    first = fleet.workers[0]
    ledger = f"progress-{uuid.uuid4().hex[:12]}"
    queue = first.nodes[0].queues[0]  # consumed on the first host only: the drain waits for this task
    task_id = f"{ledger}-0"
    app.send_task(RECORD, args=(ledger, 20), queue=queue, task_id=task_id, ignore_result=True)
    wait_active(app, first.nodes[0].full_name, task_id)
    proc = _restart("--drain-timeout", "120")
    seen = []
    try:
        for line in proc.stdout:
            event = json.loads(line)
            seen.append(event)
            if event["event"] == "draining" and event["host"] == first.name:
                time.sleep(1)  # well inside the drain: the record task runs 20 s
                proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=GUARD)
        err = proc.stderr.read()
    finally:
        proc.kill()
    assert code == 130, (seen, err)
    assert [e["event"] for e in seen] == ["batch", "draining", "interrupted"], seen
    assert seen[-1]["hosts"] == [first.name]
    assert sorted(seen[-1]["nodes"]) == sorted(node.full_name for node in first.nodes)
    assert "drained queues given back to" in err
    assert _whole_within(fleet, app), "the first host's nodes do not consume their queues again"
