"""A Debian 13 (trixie) fleet deploys and runs: RabbitMQ 4.0, Python 3.13, systemd 257.

The module brings up a trixie sandbox fleet of its own (tests/trixie/trixie-fleet/hosts.yml), deploys
it once cold and once warm, and checks what the default (Debian 12) fleet's suites check, in short:
health, broadcast, a rolling restart under load, the broker's users. Its broker is a three-node
RabbitMQ 4 cluster with quorum queues, where nothing the fleet declares uses a feature RabbitMQ 4
deprecates (transient non-exclusive queues, global QoS: RabbitMQ 4.3 refuses the first). It also
shows that a broker tool that does not return fails the deploy, naming host and command, instead of
hanging it. The waits are bounded guards against hanging, not speed measurements.
"""
from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import uuid
from collections import Counter

import pytest

from fleetctl.inventory import load_fleet
from support.deploy import changed_tasks, recap
from support.fleet import FLEETS, Fleet

pytestmark = pytest.mark.fleet("trixie")
INVENTORY = FLEETS["trixie"].inventory
BROKERS = ("tx-broker", "tx-broker2", "tx-broker3")
BROKER, WORKERS = BROKERS[0], ("tx-worker1", "tx-worker2")
RABBIT_NODES = sorted(f"rabbit@{name}" for name in BROKERS)
NODES = {"calc@tx-worker1", "reports@tx-worker1", "celery@tx-worker2"}
RECORD = "celery_app.tasks.examples.record"
RECORDS = "/var/lib/celery/records"
# Record tasks spread over the queues, half sent before the rolling restart and half while it runs.
TASKS, TASK_SECONDS = 200, 0.1
QUEUES = ("calc", "celery", "reports")
COMPLETE_WITHIN = 300  # seconds (guard)


def _succeeded(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 0, run.stdout[-4000:]
    return run.stdout


@pytest.fixture(scope="module")
def trixie_fleet(sandbox_fleet) -> Fleet:
    """The trixie fleet, up and deployed (cold) by the fleet pool."""
    return sandbox_fleet


def _failed_hosts(output: str) -> list[str]:
    """Hosts that failed or were unreachable in a deploy's PLAY RECAP (["no PLAY RECAP"] without one)."""
    summary = recap(output)
    if not summary:
        return ["no PLAY RECAP"]
    return [name for name, counts in summary.items() if counts["failed"] or counts["unreachable"]]


@pytest.fixture(scope="module")
def deployed(trixie_fleet) -> Fleet:
    """The fleet, once its cold deploy has succeeded."""
    assert _failed_hosts(trixie_fleet.deploy_output) == [], trixie_fleet.deploy_output[-4000:]
    return trixie_fleet


@pytest.fixture(scope="module")
def app(deployed):
    """A Celery app on the trixie fleet's broker (the URL list the deploy gave the workers), its queues quorum."""
    from celery import Celery

    url = load_fleet(INVENTORY).broker_url
    assert url, "the trixie fleet has no broker URL"
    app = Celery("trixie-tests", broker=url, set_as_current=False)
    app.conf.update(accept_content=["json"], broker_connection_timeout=3, task_create_missing_queue_type="quorum",
                    task_default_queue_type="quorum")
    yield app
    app.close()


def _records(fleet: Fleet, ledger: str) -> Counter:
    """task id -> how many times a record task of ledger completed, over the worker hosts."""
    counts: Counter = Counter()
    for name in WORKERS:
        out = fleet.host(name).run(f"cat {RECORDS}/{ledger}.log 2>/dev/null").stdout
        counts.update(line.split()[0] for line in out.splitlines() if line.strip())
    return counts


def _send(app, ledger: str, first: int, count: int) -> list[str]:
    ids = [f"{ledger}-{i:04d}" for i in range(first, first + count)]
    with app.producer_or_acquire() as producer:
        for i, task_id in enumerate(ids):
            app.send_task(RECORD, args=(ledger, TASK_SECONDS), queue=QUEUES[i % len(QUEUES)], task_id=task_id,
                          ignore_result=True, producer=producer)
    return ids


# Tests, in the order they run: the cold deploy, then a warm one, then the fleet at work.

def test_cold_deploy_succeeds_on_debian_13_and_the_broker_runs_rabbitmq_4(trixie_fleet):
    assert _failed_hosts(trixie_fleet.deploy_output) == [], trixie_fleet.deploy_output[-4000:]
    for name in (*BROKERS, *WORKERS):
        assert trixie_fleet.host(name).check_output(". /etc/os-release && echo $VERSION_ID") == "13"
    for name in BROKERS:
        version = trixie_fleet.host(name).check_output("rabbitmqctl -q version")
        assert version.split(".")[0] == "4", (name, version)
    assert trixie_fleet.host(WORKERS[0]).check_output("/opt/celery/venv/bin/python -c "
                                                      "'import sys; print(sys.version_info[:2] >= (3, 13))'") == "True"


def test_second_deploy_changes_nothing(deployed):
    output = _succeeded(deployed.deploy())
    assert {name: counts["changed"] for name, counts in recap(output).items()} == dict.fromkeys(
        (*BROKERS, *WORKERS), 0), changed_tasks(output)


def test_three_rabbitmq_4_nodes_form_one_cluster_with_quorum_task_queues(deployed):
    for name in BROKERS:
        status = json.loads(deployed.host(name).check_output("rabbitmqctl -q cluster_status --formatter json"))
        assert sorted(status["disk_nodes"]) == RABBIT_NODES, (name, status["disk_nodes"])
        assert sorted(status["running_nodes"]) == RABBIT_NODES, (name, status["running_nodes"])
        assert status["cluster_name"] == "celery-fleet" and not status["partitions"], (name, status)
    queues = {q["name"]: q for q in json.loads(deployed.host(BROKERS[1]).check_output(
        "rabbitmqctl -q list_queues -p celery name type members --formatter json"))}
    for name in (*QUEUES, *(f"broadcast.{node}" for node in NODES)):
        assert queues[name]["type"] == "quorum", queues[name]
        assert sorted(queues[name]["members"]) == RABBIT_NODES, queues[name]
    # What the nodes consume (inspect active_queues, through the fleet's own app on a worker host).
    out = deployed.host(WORKERS[0]).check_output(
        "cd /tmp && . /etc/conf.d/celery && timeout 60 $CELERY_BIN -A $CELERY_APP inspect active_queues -j -t 5 "
        "2>/dev/null | tail -n 1")
    active = json.loads(out)
    assert set(active) == NODES
    for node, consumed in active.items():
        types = {q["name"]: (q.get("queue_arguments") or {}).get("x-queue-type") for q in consumed}
        assert set(types.values()) == {"quorum"}, (node, types)


def test_fleet_is_healthy(deployed):
    run = deployed.fleetctl("health", "--format", "json")
    report = json.loads(run.stdout)
    assert run.returncode == 0 and report["healthy"], run.stdout[-3000:] + run.stderr
    rows = {row["name"]: row["status"] for row in report["rows"]}
    assert {name: rows.get(name) for name in NODES} == dict.fromkeys(NODES, "OK")


def test_broadcast_of_host_report_answers_from_every_node(deployed):
    run = deployed.fleetctl("broadcast", "--task", "host_report", "--format", "json")
    outcome = json.loads(run.stdout)
    assert run.returncode == 0 and outcome["complete"] and not outcome["failed"], run.stdout[-3000:] + run.stderr
    answered = {node for nodes in outcome["hosts"].values() for node in nodes}
    assert answered == NODES
    hostnames = {node: reply["result"]["hostname"] for nodes in outcome["hosts"].values()
                 for node, reply in nodes.items()}
    assert hostnames == {node: node.split("@")[1] for node in NODES}


def test_rolling_restart_succeeds_and_loses_no_task(deployed, app):
    ledger = f"trixie-{uuid.uuid4().hex[:12]}"
    try:
        ids = _send(app, ledger, 0, TASKS // 2)
        restarted: dict[str, subprocess.CompletedProcess] = {}
        thread = threading.Thread(target=lambda: restarted.update(run=deployed.fleetctl("restart", "--format", "json")))
        thread.start()
        ids += _send(app, ledger, TASKS // 2, TASKS - TASKS // 2)  # while the restart drains and restarts
        thread.join(600)
        run = restarted["run"]
        outcome = json.loads(run.stdout)
        assert run.returncode == 0, run.stdout + run.stderr
        assert {host["host"]: host["status"] for host in outcome["hosts"]} == dict.fromkeys(WORKERS, "OK")

        deadline = time.monotonic() + COMPLETE_WITHIN
        while not set(ids) <= set(counts := _records(deployed, ledger)):
            assert time.monotonic() < deadline, f"{len(set(ids) - set(counts))} of {len(ids)} tasks never completed"
            time.sleep(3)
        assert not set(counts) - set(ids)
    finally:
        for name in WORKERS:
            deployed.host(name).run(f"rm -f {RECORDS}/{ledger}.log")


def test_fleet_user_logs_in_and_guest_is_gone(deployed, app):
    broker = deployed.host(BROKER)
    users = {row["user"]: row["tags"] for row in json.loads(broker.check_output(
        "rabbitmqctl -q list_users --formatter json"))}
    assert users == {"celery": []}
    assert broker.run("rabbitmqctl -q authenticate_user guest guest").rc != 0
    with app.connection_for_write() as conn:  # the fleet user, with the password of the workers' URL
        conn.ensure_connection(max_retries=1, timeout=10)
    worker = deployed.host(WORKERS[0])
    login = worker.run("cd /tmp && /opt/celery/venv/bin/python -c 'from celery_app.app import app; "
                       "app.connection_for_write().ensure_connection(max_retries=1, timeout=10)'")
    assert login.rc == 0, login.stderr[-2000:]


def test_nothing_the_fleet_declared_uses_a_feature_rabbitmq_4_deprecates(deployed):
    # By now the fleet has run tasks, a broadcast, health and a rolling restart (control, event and
    # reply queues included). RabbitMQ 4.3 refuses transient non-exclusive queues outright.
    for name in BROKERS:
        check = deployed.host(name).run("rabbitmq-diagnostics -q check_if_any_deprecated_features_are_used")
        assert check.rc == 0, (name, check.stdout + check.stderr)


def test_stuck_broker_tool_fails_the_deploy_naming_host_and_command(deployed):
    # A rabbitmqctl that never returns, ahead of the real one in PATH; bounded at 5 s for the test.
    broker = deployed.host(BROKER)
    fake = "/usr/local/sbin/rabbitmqctl"
    assert broker.run(f"printf '#!/bin/sh\\nexec sleep 100000\\n' > {fake} && chmod 755 {fake}").rc == 0
    try:
        run = deployed.deploy(args="-e _rabbitmq_cli_timeout=5", timeout=600)
    finally:
        broker.run(f"rm -f {fake}")
    assert run.returncode != 0
    assert f"{BROKER}: rabbitmqctl eval did not finish within 5 s" in run.stdout, run.stdout[-3000:]
    # Preflight's listing of the broker's queues met the stuck tool first: skipped, saying why.
    assert re.search(rf"{BROKER}: queue options not checked .*rabbitmqctl list_\w+ did not finish within 5 s",
                     run.stdout, re.DOTALL), run.stdout[-3000:]
    assert recap(run.stdout)[BROKER]["failed"] == 1
    assert broker.run("pgrep -x sleep").rc == 1  # the stuck command was ended, not left behind
