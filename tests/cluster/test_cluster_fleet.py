"""A RabbitMQ cluster of three broker hosts (issue 15), grown from one broker host, with two worker hosts.

Inventory tests/fleets/cluster/: cl-b1 (the seed), cl-b2, cl-b3 in group rabbitmq; cl-w1 and
cl-w2 each run a node on `orders` and `celery` (two pool processes); beat on cl-w2.
"""
from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest
import yaml

from fleetctl import inventory as fleet_model
from support.deploy import ROOT, changed_tasks, deploy, inventory_hostvars, recap, write_inventory
from support.fleet import RELAXED, Fleet

pytestmark = pytest.mark.fleet("cluster")
CLUSTER = Fleet.named("cluster")
SANDBOX_INVENTORY = CLUSTER.inventory
BROKERS, WORKERS = ("cl-b1", "cl-b2", "cl-b3"), ("cl-w1", "cl-w2")
NODES = [f"rabbit@{name}" for name in BROKERS]
COOKIE_FILE = ROOT / ".secrets" / SANDBOX_INVENTORY.parent.name / "rabbitmq-erlang-cookie"
RECORD = "celery_app.tasks.examples.record"  # late-acked, at least once (celery_app.tasks.examples)
# The disruption test: TASKS record tasks of TASK_SECONDS each on the four pool processes (two per worker host):
# at least TASKS * TASK_SECONDS / 4 = 150 s of work, so that a backlog is there through the disruptions.
TASKS, TASK_SECONDS = 2000, 0.3
POWER_CUT = 60  # seconds the seed broker host stays off
COMPLETE_WITHIN = 600  # seconds (guard)
GUARD = 300  # seconds; against a hanging command, not a speed assertion


def _ssh(host: str, command: str, timeout: float = GUARD, check: bool = True) -> str:
    """command run as root on a sandbox host of the fleet, its stdout."""
    return CLUSTER.ssh(host, command, timeout, check)


def _cluster_status(host: str) -> dict:
    return json.loads(_ssh(host, "rabbitmqctl -q cluster_status --formatter json"))


def _running_nodes(host: str) -> list[str]:
    """The cluster's running nodes as host sees them, sorted; [] while its broker is not running (paused, booting)."""
    out = _ssh(host, "rabbitmqctl -q cluster_status --formatter json", check=False)
    try:
        return sorted(json.loads(out)["running_nodes"])
    except (ValueError, KeyError):
        return []


def _fleetctl(verb: str, *args: str) -> subprocess.CompletedProcess:
    return CLUSTER.fleetctl(verb, *args, timeout=GUARD)


def _health() -> subprocess.CompletedProcess:
    """fleetctl health until it exits 0 (bounded: nodes reconnecting after a disruption), the last run."""
    deadline = time.monotonic() + 120
    while True:
        done = _fleetctl("health", "--format", "json", *RELAXED)
        if done.returncode == 0 or time.monotonic() > deadline:
            return done
        time.sleep(3)


def _send(queue: str, count: int, seconds: float = 0, queue_type: str = "quorum") -> list[str]:
    """count record tasks to queue, published with confirms through every broker node's URL; their ids."""
    from celery import Celery

    app = Celery("cluster-tests", broker=fleet_model.load_fleet(SANDBOX_INVENTORY).broker_url, set_as_current=False)
    # A publisher outside the fleet declares the queues as the fleet does: quorum (README, broker cluster).
    app.conf.update(broker_connection_timeout=3, task_create_missing_queue_type=queue_type,
                    task_default_queue_type=queue_type, broker_transport_options={"confirm_publish": True})
    ledger = f"cluster-{uuid.uuid4().hex[:12]}"
    ids = [f"{ledger}-{n:03d}" for n in range(count)]
    try:
        with app.producer_or_acquire() as producer:
            for task_id in ids:
                app.send_task(RECORD, args=(ledger, seconds), queue=queue, task_id=task_id, ignore_result=True,
                              producer=producer)
    finally:
        app.close()
    return ids


def _wait_done(ids: list[str], within: float = 120) -> set[str]:
    """Bounded wait until every task of ids has a record on a worker host; the task ids recorded."""
    ledger = ids[0].rsplit("-", 1)[0]
    deadline = time.monotonic() + within
    while True:
        done = {line.split()[0] for host in WORKERS
                for line in _ssh(host, f"cat /var/lib/celery/records/{ledger}.log 2>/dev/null || true").splitlines()
                if line.strip()}
        if set(ids) <= done or time.monotonic() > deadline:
            return done
        time.sleep(1)


GROWN_TASKS = 40  # tasks waiting on the single broker when the fleet grows to three


def _workers(verb: str) -> None:
    for host in WORKERS:
        _ssh(host, f"systemctl {verb} celery" + (" celerybeat" if host == "cl-w2" else ""))


@pytest.fixture(scope="module")
def fleet(sandbox_fleet, tmp_path_factory):
    """The fleet grown as an operator grows one (the deploy's output of the cluster): first one broker host, cl-b1,
    with classic queues; tasks wait on it while the deploy of all three refuses to start, naming the classic queues;
    then the way out the refusal names (the queues drained, then deleted) and the deploy that forms the cluster.
    Every task sent to the single broker runs."""
    document = yaml.safe_load(SANDBOX_INVENTORY.read_text())
    document["all"]["children"]["rabbitmq"]["hosts"] = {"cl-b1": None}
    single = deploy(write_inventory(tmp_path_factory.mktemp("single"), document, SANDBOX_INVENTORY))
    assert single.returncode == 0, single.stdout[-5000:]
    _workers("stop")
    ids = _send("orders", GROWN_TASKS, queue_type="classic")
    refused = deploy(SANDBOX_INVENTORY)
    assert refused.returncode != 0
    assert "cl-b1: queue orders exists on the broker as a classic queue, but the fleet declares it quorum" in \
        refused.stdout, refused.stdout[-5000:]
    assert "set celery_worker_queue_type: classic for group celery_workers" in refused.stdout
    assert _ssh("cl-b2", "test -e /usr/sbin/rabbitmqctl && echo installed || echo absent").strip() == "absent"
    assert not any(r["changed"] for r in recap(refused.stdout).values()), recap(refused.stdout)
    # The way out: drain (the workers run every waiting task), stop the consumers, delete the fleet's queues.
    _workers("start")
    assert set(ids) <= _wait_done(ids), "a task sent to the single broker never ran"
    _workers("stop")
    classic = [name for name in _ssh("cl-b1", "rabbitmqctl -q list_queues -p celery name --no-table-headers").split()
               if name in ("orders", "celery") or name.startswith("broadcast.")]
    for name in classic:
        _ssh("cl-b1", f"rabbitmqctl -q delete_queue -p celery {name}")
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
    assert {host: r["changed"] for host, r in recap(done.stdout).items()} == {h: 0 for h in BROKERS + WORKERS}, \
        changed_tasks(done.stdout)


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
    health = _health()
    assert health.returncode == 0, health.stdout + health.stderr

    ids = _send("orders", 20)
    done = _wait_done(ids)
    assert set(ids) <= done, f"{len(set(ids) - done)} of {len(ids)} tasks never ran"


def test_task_and_broadcast_queues_are_quorum_queues_on_every_broker_node(fleet):
    queues = {q["name"]: q for q in json.loads(_ssh("cl-b2", "rabbitmqctl -q list_queues -p celery name type members "
                                                               "--formatter json"))}
    fleet_queues = ["orders", "celery", "broadcast.orders@cl-w1", "broadcast.orders@cl-w2"]
    for name in fleet_queues:
        assert queues[name]["type"] == "quorum", queues[name]
        assert sorted(queues[name]["members"]) == NODES, queues[name]
    # What the nodes themselves consume (inspect active_queues), through the fleet's own app.
    out = _ssh("cl-w1", "cd /tmp && . /etc/conf.d/celery && timeout 60 $CELERY_BIN -A $CELERY_APP inspect "
                        "active_queues -j -t 5 2>/dev/null | tail -n 1")
    active = json.loads(out)
    for node in ("orders@cl-w1", "orders@cl-w2"):
        types = {q["name"]: (q.get("queue_arguments") or {}).get("x-queue-type") for q in active[node]}
        assert types == {"orders": "quorum", "celery": "quorum", f"broadcast.{node}": "quorum"}, (node, types)


def test_health_warns_of_a_quorum_replica_missing_on_a_node_and_a_redeploy_grows_it_back(fleet):
    rows = _health_rows()[1]
    assert any(fact.startswith("quorum queue, 3 of 3 replicas online, leader on cl-b")
               for fact in rows["orders"]["facts"]), rows["orders"]
    try:
        _ssh("cl-b3", "rabbitmq-queues delete_member -p celery orders rabbit@cl-b3")
        code, rows = _health_rows()
        assert code == 0 and rows["orders"]["status"] == "WARN", rows["orders"]
        assert rows["orders"]["reasons"] == ["no replica on cl-b3 (its node is up: a re-deploy grows the queue to it)"]
        done = deploy(SANDBOX_INVENTORY)
        assert done.returncode == 0, done.stdout[-3000:]
    finally:  # whatever happened, the next tests get the queue on all three nodes
        _ssh("cl-b3", "rabbitmq-queues add_member -p celery orders rabbit@cl-b3", check=False)
    code, rows = _health_rows()
    assert code == 0 and rows["orders"]["status"] == "OK", rows["orders"]
    assert any(fact.startswith("quorum queue, 3 of 3 replicas online") for fact in rows["orders"]["facts"])


def test_health_fails_naming_the_node_whose_memory_alarm_blocks_the_publishers(fleet):
    watermark = _ssh("cl-b2", "rabbitmqctl -q eval 'vm_memory_monitor:get_vm_memory_high_watermark().'").strip()
    try:
        _ssh("cl-b2", "rabbitmqctl -q set_vm_memory_high_watermark 0.0001")
        deadline = time.monotonic() + 60
        while (rows := _health_rows()[1])["cl-b2"]["status"] != "FAIL":
            assert time.monotonic() < deadline, rows["cl-b2"]
            time.sleep(2)
        assert "memory used watermark alarm in effect: RabbitMQ blocks every publisher of the cluster" in \
            rows["cl-b2"]["reasons"], rows["cl-b2"]
        assert rows["cl-b1"]["status"] == rows["cl-b3"]["status"] == "OK", (rows["cl-b1"], rows["cl-b3"])
    finally:
        _ssh("cl-b2", f"rabbitmqctl -q set_vm_memory_high_watermark {watermark}")
    deadline = time.monotonic() + 60
    while (health := _health()).returncode != 0:
        assert time.monotonic() < deadline, health.stdout + health.stderr
        time.sleep(2)


def test_health_warns_with_one_broker_node_off_and_fails_when_the_majority_is_lost(fleet):
    try:
        assert _fleetctl_sandbox("poweroff", "cl-b3").returncode == 0
        code, rows = _health_rows()
        assert code == 0 and rows["cl-b3"]["status"] == "WARN", rows["cl-b3"]
        assert any("2 of 3 nodes up, the cluster keeps its majority" in r for r in rows["cl-b3"]["reasons"])
        assert rows["cl-b1"]["status"] == rows["cl-b2"]["status"] == "OK"
        assert rows["orders"]["status"] == "WARN", rows["orders"]  # its replica on cl-b3 is out
        assert rows["orders"]["reasons"][0].startswith("quorum queue, 2 of 3 replicas online (cl-b3 not answering)")
        refused = _fleetctl("broker restart")  # a degraded cluster is not restarted: it says why
        assert refused.returncode == 1 and "cluster degraded, nothing restarted" in refused.stdout, refused.stdout
        assert "cl-b3: broker not running or not answering" in refused.stdout, refused.stdout
        assert _fleetctl_sandbox("poweroff", "cl-b2").returncode == 0
        code, rows = _health_rows()
        assert code == 1
        for host in ("cl-b2", "cl-b3"):
            assert rows[host]["status"] in ("FAIL", "DOWN")
            assert any("only 1 of 3 broker nodes up (cl-b2, cl-b3 out)" in r for r in rows[host]["reasons"]), rows[host]
    finally:
        for host in ("cl-b2", "cl-b3"):
            _fleetctl_sandbox("poweron", host)
    deadline = time.monotonic() + 240
    while _running_nodes("cl-b1") != NODES:  # both rejoin with their disks; cl-b1 resumes
        assert time.monotonic() < deadline, "the cluster did not run all three nodes again"
        time.sleep(2)
    health = _health()
    assert health.returncode == 0, health.stdout + health.stderr


def _health_rows() -> tuple[int, dict[str, dict]]:
    done = _fleetctl("health", "--format", "json", *RELAXED)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return done.returncode, {row["name"]: row for row in json.loads(done.stdout)["rows"]}


def test_late_acked_tasks_all_complete_through_a_power_cut_a_blank_replacement_and_a_broker_restart(fleet):
    """2,000 late-acked record tasks, while: the seed broker host loses power for 60 s and comes back with its disk;
    another broker host is replaced by a blank one (same name, empty disk) and re-deployed; then `fleetctl broker
    restart` of all three. Every task completes at least once; every worker node answers again by itself."""
    ids = _send("orders", TASKS // 2, TASK_SECONDS) + _send("celery", TASKS // 2, TASK_SECONDS)
    ledger_ids = {}
    for task_id in ids:
        ledger_ids.setdefault(task_id.rsplit("-", 1)[0], []).append(task_id)

    # The seed (every client's first URL) loses power: clients fail over; it rejoins with its disk.
    assert _fleetctl_sandbox("poweroff", "cl-b1").returncode == 0
    time.sleep(POWER_CUT)
    assert _fleetctl_sandbox("poweron", "cl-b1").returncode == 0
    _wait_cluster("cl-b2")
    pending = len(set(ids) - _done_ids(ledger_ids))

    # Another broker host is replaced by a blank one: the cluster forgets its old self, it joins again.
    assert _fleetctl_sandbox("poweroff", "cl-b3").returncode == 0
    up = CLUSTER.make("sandbox-up", timeout=GUARD)  # boots the dead host blank
    assert up.returncode == 0, up.stdout
    assert _ssh("cl-b3", "test -e /var/lib/rabbitmq || echo blank").strip() == "blank"
    done = deploy(SANDBOX_INVENTORY)
    assert done.returncode == 0, done.stdout[-5000:]
    changed = {host: r["changed"] for host, r in recap(done.stdout).items()}
    assert changed["cl-b3"] > 0 and all(changed[h] == 0 for h in changed if h != "cl-b3"), changed
    assert "changed: [cl-b3 -> cl-b1" in done.stdout  # its stale membership forgotten on the seed
    _wait_cluster("cl-b1")

    # A rolling restart of the three broker nodes.
    restart = _fleetctl("broker restart", "--format", "json")
    assert restart.returncode == 0, restart.stdout + restart.stderr
    assert [node["status"] for node in json.loads(restart.stdout)["nodes"]] == ["OK", "OK", "OK"]

    deadline = time.monotonic() + COMPLETE_WITHIN
    while not set(ids) <= (finished := _done_ids(ledger_ids)) and time.monotonic() < deadline:
        time.sleep(3)
    assert set(ids) <= finished, f"{len(set(ids) - finished)} of {len(ids)} tasks never completed"
    counts = _record_counts(ledger_ids)
    duplicates = sum(count - 1 for count in counts.values())
    print(f"\n{len(ids)} late-acked tasks, all completed; {pending} not yet done when the seed came back; "
          f"duplicates (ran more than once): {duplicates}")
    health = _health()  # every worker node answers ping with its queues, no manual step
    assert health.returncode == 0, health.stdout + health.stderr
    for host in BROKERS:
        assert _running_nodes(host) == NODES


def _wait_cluster(host: str, within: float = 240) -> None:
    deadline = time.monotonic() + within
    while _running_nodes(host) != NODES:
        assert time.monotonic() < deadline, f"the cluster did not run all three nodes again ({host}'s view)"
        time.sleep(2)


def _record_counts(ledger_ids: dict[str, list[str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ledger in ledger_ids:
        for host in WORKERS:
            out = _ssh(host, f"cat /var/lib/celery/records/{ledger}.log 2>/dev/null || true")
            for line in out.splitlines():
                if line.strip():
                    counts[line.split()[0]] = counts.get(line.split()[0], 0) + 1
    return counts


def _done_ids(ledger_ids: dict[str, list[str]]) -> set[str]:
    return set(_record_counts(ledger_ids))


def _fleetctl_sandbox(verb: str, host: str) -> subprocess.CompletedProcess:
    return CLUSTER.sandbox(verb, host, timeout=GUARD)
