"""A RabbitMQ cluster of three broker hosts (issue 15), deployed once, with two worker hosts.

Inventory tests/cluster/cluster-fleet/: cl-b1 (the seed), cl-b2, cl-b3 in group rabbitmq; cl-w1 and
cl-w2 each run a node on `orders` and `celery`; beat on cl-w2.
"""
from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from fleetctl import inventory as fleet_model
from support.deploy import ROOT, deploy, inventory_hostvars, recap, ssh

SANDBOX_INVENTORY = Path(__file__).resolve().parent / "cluster-fleet" / "hosts.yml"
BROKERS, WORKERS = ("cl-b1", "cl-b2", "cl-b3"), ("cl-w1", "cl-w2")
NODES = [f"rabbit@{name}" for name in BROKERS]
COOKIE_FILE = ROOT / ".secrets" / "cluster-fleet" / "rabbitmq-erlang-cookie"
FLEETCTL = ROOT / ".venv" / "bin" / "fleetctl"
RECORD = "celery_app.tasks.examples.record"
GUARD = 300  # seconds; against a hanging command, not a speed assertion


def _ssh(host: str, command: str, timeout: float = GUARD, check: bool = True) -> str:
    """command run as root on a sandbox host of the fleet, its stdout."""
    return ssh(SANDBOX_INVENTORY, host, command, timeout, check)


def _cluster_status(host: str) -> dict:
    return json.loads(_ssh(host, "rabbitmqctl -q cluster_status --formatter json"))


def _fleetctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(FLEETCTL), *args, "--inventory", str(SANDBOX_INVENTORY)], cwd=ROOT,
                          capture_output=True, text=True, timeout=GUARD)


@pytest.fixture(scope="module")
def fleet(sandbox_fleet):
    """The fleet, deployed once (a cold deploy on fresh hosts), and the deploy's output."""
    done = deploy(SANDBOX_INVENTORY)
    assert done.returncode == 0, done.stdout[-5000:]
    return done.stdout


def test_three_broker_hosts_form_one_cluster_that_every_node_sees(fleet):
    for host in BROKERS:
        status = _cluster_status(host)
        assert sorted(status["disk_nodes"]) == NODES, (host, status["disk_nodes"])
        assert sorted(status["running_nodes"]) == NODES, (host, status["running_nodes"])
        assert status["cluster_name"] == "celery-fleet" and not status["partitions"]
        conf = _ssh(host, "cat /etc/rabbitmq/rabbitmq.conf")
        assert "cluster_partition_handling = pause_minority" in conf


def test_nodes_share_the_generated_cookie_readable_by_rabbitmq_only_and_never_printed(fleet):
    cookie = COOKIE_FILE.read_text().strip()
    assert len(cookie) == 32
    for host in BROKERS:
        assert _ssh(host, "stat -c '%U:%G:%a' /var/lib/rabbitmq/.erlang.cookie").strip() == "rabbitmq:rabbitmq:400"
        assert _ssh(host, "sha1sum < /var/lib/rabbitmq/.erlang.cookie").split()[0] == \
            subprocess.run(["sha1sum"], input=cookie, capture_output=True, text=True).stdout.split()[0]
    assert cookie not in fleet


def test_second_deploy_changes_nothing(fleet):
    done = deploy(SANDBOX_INVENTORY)
    assert done.returncode == 0, done.stdout[-3000:]
    assert {host: r["changed"] for host, r in recap(done.stdout).items()} == {h: 0 for h in BROKERS + WORKERS}


def test_workers_and_tools_get_every_broker_node_the_seed_first(fleet):
    addresses = [inventory_hostvars(SANDBOX_INVENTORY)[host]["ansible_host"] for host in BROKERS]
    for host in WORKERS:
        line = next(line for line in _ssh(host, "cat /etc/conf.d/celery").splitlines()
                    if line.startswith("CELERY_BROKER_URL="))
        urls = line.split("=", 1)[1].strip('"').split(";")
        assert [url.rsplit("@", 1)[1] for url in urls] == [f"{address}:5672/celery" for address in addresses]
    url = fleet_model.load_fleet(SANDBOX_INVENTORY).broker_url
    assert [u.rsplit("@", 1)[1] for u in url.split(";")] == [f"{address}:5672/celery" for address in addresses]


def test_every_node_answers_and_runs_tasks_through_the_cluster(fleet):
    health = _fleetctl("health", "--format", "json", "--load-warn", "50", "--load-fail", "100",
                       "--memory-warn", "99", "--memory-fail", "100", "--disk-warn", "99", "--disk-fail", "100")
    assert health.returncode == 0, health.stdout + health.stderr
    from celery import Celery

    app = Celery("cluster-tests", broker=fleet_model.load_fleet(SANDBOX_INVENTORY).broker_url, set_as_current=False)
    app.conf.update(broker_connection_timeout=3)
    ledger = f"cluster-{uuid.uuid4().hex[:12]}"
    ids = [f"{ledger}-{n:03d}" for n in range(20)]
    with app.producer_or_acquire() as producer:
        for task_id in ids:
            app.send_task(RECORD, args=(ledger, 0), queue="orders", task_id=task_id, ignore_result=True,
                          producer=producer)
    app.close()
    deadline = time.monotonic() + 120
    while True:
        done = {line.split()[0] for host in WORKERS
                for line in _ssh(host, f"cat /var/lib/celery/records/{ledger}.log 2>/dev/null || true").splitlines()
                if line.strip()}
        if set(ids) <= done or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert set(ids) <= done, f"{len(set(ids) - done)} of {len(ids)} tasks never ran"


def test_a_broker_host_replaced_by_a_blank_one_rejoins_on_the_next_deploy(fleet):
    """Same name, empty disk: the cluster forgets its stale membership, then it joins again."""
    proc = _fleetctl_sandbox("poweroff", "cl-b3")
    assert proc.returncode == 0, proc.stderr
    up = subprocess.run(["make", "--no-print-directory", "sandbox-up", f"INVENTORY={SANDBOX_INVENTORY}"], cwd=ROOT,
                        capture_output=True, text=True, timeout=GUARD)  # boots the dead host blank
    assert up.returncode == 0, up.stdout + up.stderr
    assert _ssh("cl-b3", "test -e /var/lib/rabbitmq || echo blank").strip() == "blank"
    assert "rabbit@cl-b3" not in _cluster_status("cl-b1")["running_nodes"]
    done = deploy(SANDBOX_INVENTORY)
    assert done.returncode == 0, done.stdout[-5000:]
    changed = {host: r["changed"] for host, r in recap(done.stdout).items()}
    assert changed["cl-b3"] > 0 and all(changed[h] == 0 for h in changed if h != "cl-b3"), changed
    assert "changed: [cl-b3 -> cl-b1" in done.stdout  # its stale membership forgotten on the seed
    for host in BROKERS:
        assert sorted(_cluster_status(host)["running_nodes"]) == NODES


def _fleetctl_sandbox(verb: str, host: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(FLEETCTL), "sandbox", verb, host, "--inventory", str(SANDBOX_INVENTORY)], cwd=ROOT,
                          capture_output=True, text=True, timeout=GUARD)
