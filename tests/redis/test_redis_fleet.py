"""A fleet with a Redis result backend, priority lanes and routed queues (issue 14), deployed once.

Inventory tests/fleets/redis/: rd-broker, rd-redis (group redis), rd-w1 (prio: queue priority;
feeds: queue feeds bound to the topic exchange feeds with feed.#), rd-w2 (shared: priority,
background, celery; urgent: queue urgent with max_priority 10; beat). Results expire after 15 s.
Clients run on the worker hosts with the fleet's own app and settings (/etc/conf.d/celery).
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import time
import uuid

import pytest
import yaml

from support.deploy import ROOT, deploy, fingerprint, inventory_hostvars, recap, ssh, write_inventory
from support.fleet import FLEETS

pytestmark = pytest.mark.fleet("redis")
SANDBOX_INVENTORY = FLEETS["redis"].inventory
BROKER, REDIS, W1, W2 = "rd-broker", "rd-redis", "rd-w1", "rd-w2"
PASSWORD_FILE = ROOT / ".secrets" / SANDBOX_INVENTORY.parent.name / "redis-celery-password"
RECORDS = "/var/lib/celery/records"
PY = "cd /tmp && . /etc/conf.d/celery && exec timeout 120 /opt/celery/venv/bin/python -c "


def _ssh(host: str, command: str, timeout: float = 150, check: bool = True) -> str:
    """command run as root on a sandbox host of the fleet, its stdout."""
    return ssh(SANDBOX_INVENTORY, host, command, timeout, check)


def _python(host: str, script: str, timeout: float = 150) -> str:
    return _ssh(host, PY + shlex.quote("from celery_app.app import app\n" + script), timeout)


def _records(host: str, ledger: str) -> list[str]:
    return _ssh(host, f"cat {RECORDS}/{ledger}.log 2>/dev/null || true").split("\n")


def _wait_records(host: str, ledger: str, count: int, within: float = 60) -> list[str]:
    deadline = time.monotonic() + within
    while True:
        lines = [line for line in _records(host, ledger) if line.strip()]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.5)


def _wait_log(host: str, task_id: str, within: float) -> str:
    """The lines of the host's celery logs from the one naming task_id, once a connection error follows it."""
    deadline = time.monotonic() + within
    while True:
        found = _ssh(host, f"grep -h -A 3 -F {shlex.quote(task_id)} /var/log/celery/*.log || true")
        if "ConnectionError" in found or time.monotonic() > deadline:
            return found
        time.sleep(2)


def _redis(commands: list[list[str]]) -> list[str]:
    """Replies (first line of each) of commands sent in order on one connection to the redis host."""
    address = inventory_hostvars(SANDBOX_INVENTORY)[REDIS]["ansible_host"]
    with socket.create_connection((address, 6379), timeout=5) as sock:
        handle = sock.makefile("rb")
        replies = []
        for words in commands:
            encoded = [w.encode() for w in words]
            sock.sendall(b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in encoded))
            line = handle.readline().decode().rstrip("\r\n")
            if line.startswith("$") and int(line[1:]) >= 0:
                handle.read(int(line[1:]) + 2)
            elif line.startswith("*"):
                for _ in range(max(0, int(line[1:]))):
                    size = handle.readline()
                    handle.read(int(size[1:]) + 2)
            replies.append(line)
        return replies


@pytest.fixture(scope="module")
def fleet(sandbox_fleet):
    """The fleet, deployed once (a cold deploy on fresh hosts: its spec), and the deploy's output."""
    return sandbox_fleet.deploy_output


@pytest.fixture(scope="module")
def password(fleet) -> str:
    return PASSWORD_FILE.read_text().strip()


def test_second_deploy_changes_nothing(fleet):
    done = deploy(SANDBOX_INVENTORY)
    assert done.returncode == 0, done.stdout[-3000:]
    assert {host: r["changed"] for host, r in recap(done.stdout).items()} == {BROKER: 0, REDIS: 0, W1: 0, W2: 0}


def test_workers_get_the_redis_result_backend_and_result_expires(fleet, password):
    env = _ssh(W1, "cat /etc/conf.d/celery")
    address = inventory_hostvars(SANDBOX_INVENTORY)[REDIS]["ansible_host"]
    assert f'CELERY_RESULT_BACKEND="redis://celery:{password}@{address}:6379/0"' in env
    assert 'CELERY_RESULT_EXPIRES="15"' in env
    assert "redis==" in _ssh(W1, "/opt/celery/venv/bin/pip freeze")


def test_result_is_read_back_through_redis_by_a_client_that_did_not_send_it(fleet):
    task_id = _python(W1, "print(app.send_task('celery_app.tasks.examples.add', (2, 3), queue='celery').id)").strip()
    script = f"from celery.result import AsyncResult\nprint(AsyncResult({task_id!r}, app=app).get(timeout=60))"
    assert _python(W2, script).strip() == "5"


def test_results_expire_after_result_expires(fleet):
    script = ("r = app.send_task('celery_app.tasks.examples.add', (1, 1), queue='celery')\n"
              "print(r.get(timeout=60))\nimport time; time.sleep(18)\n"
              "from celery.result import AsyncResult\nprint(AsyncResult(r.id, app=app).state)")
    assert _python(W2, script).split() == ["2", "PENDING"]  # the key is gone: Celery knows nothing of it


def test_default_user_and_a_wrong_password_are_refused(fleet, password):
    replies = _redis([["PING"], ["AUTH", "default", "x"], ["AUTH", "celery", password + "x"], ["AUTH", "x"]])
    assert replies[0].startswith("-NOAUTH")
    assert all(reply.startswith("-WRONGPASS") for reply in replies[1:]), replies


def test_acl_user_cannot_flushall_config_or_keys(fleet, password):
    replies = _redis([["AUTH", "celery", password], ["PING"], ["FLUSHALL"], ["CONFIG", "GET", "*"], ["KEYS", "*"],
                      ["SET", "other-key", "1"], ["GET", "celery-task-meta-nothing"]])
    assert replies[:2] == ["+OK", "+PONG"]
    assert all(reply.startswith("-NOPERM") for reply in replies[2:6]), replies
    assert replies[6] == "$-1"


def test_redis_listens_on_its_fleet_address_and_loopback_only_in_protected_mode(fleet):
    address = inventory_hostvars(SANDBOX_INVENTORY)[REDIS]["ansible_host"]
    listening = _ssh(REDIS, "ss -Htln 'sport = :6379'")
    assert f"{address}:6379" in listening and "127.0.0.1:6379" in listening and "0.0.0.0:6379" not in listening
    conf = _ssh(REDIS, "cat /etc/redis/redis.conf")
    assert "protected-mode yes" in conf and "maxmemory-policy volatile-ttl" in conf


def test_redis_password_is_in_no_output_log_or_process_list(fleet, password):
    assert password not in fleet
    for host in (BROKER, REDIS, W1, W2):
        assert password not in _ssh(host, "ps -eo args; journalctl --no-pager -q 2>/dev/null | tail -n 5000; "
                                          "cat /var/log/redis/*.log /var/log/celery/*.log 2>/dev/null || true")
    assert password not in _ssh(REDIS, "cat /etc/redis/redis.conf")  # only its SHA-256 hash


def test_topic_exchange_routes_feed_import_to_the_feed_node_and_other_keys_nowhere(fleet):
    ledger = f"feeds-{uuid.uuid4().hex[:8]}"
    script = (f"a = app.send_task('celery_app.tasks.examples.record', ({ledger!r},), exchange='feeds', "
              f"routing_key='feed.import')\n"
              f"b = app.send_task('celery_app.tasks.examples.record', ({ledger!r},), exchange='feeds', "
              f"routing_key='other.x')\nprint(a.id, b.id)")
    routed, unrouted = _python(W2, script).split()
    lines = _wait_records(W1, ledger, 1)
    assert lines == [f"{routed} feeds@{W1}"]
    time.sleep(3)
    assert [line for line in _records(W1, ledger) + _records(W2, ledger) if line.strip()] == lines
    assert unrouted not in " ".join(lines)


def test_priority_task_starts_on_the_reserved_node_despite_a_background_backlog(fleet):
    backlog, ledger = f"backlog-{uuid.uuid4().hex[:8]}", f"prio-{uuid.uuid4().hex[:8]}"
    script = (f"for _ in range(200):\n"
              f"    app.send_task('celery_app.tasks.examples.record', ({backlog!r}, 0.5), queue='background')\n"
              f"import time; time.sleep(1)\n"
              f"print(app.send_task('celery_app.tasks.examples.record', ({ledger!r},), queue='priority').id)")
    try:
        task_id = _python(W1, script).strip()
        sent = time.monotonic()
        lines = _wait_records(W1, ledger, 1, within=10)
        started_within = time.monotonic() - sent
        done_of_backlog = len([line for line in _records(W2, backlog) if line.strip()])
        assert lines == [f"{task_id} prio@{W1}"]
        assert started_within < 2 + 1  # the acceptance bound, plus one SSH round trip of the poll
        assert done_of_backlog < 100  # the backlog (about 50 s on the shared nodes) is still running
    finally:
        _ssh(W2, ". /etc/conf.d/celery && cd /tmp && timeout 60 $CELERY_BIN -A $CELERY_APP purge -f -Q background",
             check=False)


def test_priority_nine_runs_before_a_hundred_priority_zero_tasks_on_a_max_priority_queue(fleet):
    ledger = f"urgent-{uuid.uuid4().hex[:8]}"
    node = f"urgent@{W2}"
    script = (f"app.control.cancel_consumer('urgent', destination=[{node!r}], reply=True, timeout=5)\n"
              f"for _ in range(100):\n"
              f"    app.send_task('celery_app.tasks.examples.record', ({ledger!r}, 0.02), queue='urgent', priority=0)\n"
              f"hi = app.send_task('celery_app.tasks.examples.record', ({ledger!r}, 0.02), queue='urgent',"
              f" priority=9)\n"
              f"app.control.add_consumer('urgent', destination=[{node!r}], reply=True, timeout=5)\n"
              f"print(hi.id)")
    high = _python(W1, script).strip()
    lines = _wait_records(W2, ledger, 101, within=90)
    assert len(lines) == 101
    assert lines[0].split()[0] == high


def test_active_queues_show_the_declared_options(fleet):
    script = ("import json\nanswers = app.control.inspect(timeout=3).active_queues() or {}\n"
              "print(json.dumps(answers))")
    answers = json.loads(_python(W1, script))
    urgent = next(q for q in answers[f"urgent@{W2}"] if q["name"] == "urgent")
    feeds = next(q for q in answers[f"feeds@{W1}"] if q["name"] == "feeds")
    assert urgent["queue_arguments"] == {"x-max-priority": 10}
    assert (feeds["exchange"]["name"], feeds["exchange"]["type"], feeds["routing_key"]) == ("feeds", "topic", "feed.#")


def test_health_shows_each_queue_with_its_options(fleet):
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "fleetctl"), "health", "--inventory", str(SANDBOX_INVENTORY)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=dict(os.environ, NO_COLOR="1"))
    assert done.returncode in (0, 1), done.stdout + done.stderr  # a busy machine's load, a new beat may FAIL hosts
    assert "queues urgent (max_priority 10), broadcast" in done.stdout
    assert "queues feeds (topic feeds, feed.#), broadcast" in done.stdout


def test_a_changed_max_priority_of_an_existing_queue_is_refused_before_any_host_changes(fleet, tmp_path):
    document = yaml.safe_load(SANDBOX_INVENTORY.read_text())
    workers = document["all"]["children"]["celery_workers"]
    workers["vars"] = yaml.safe_load((SANDBOX_INVENTORY.parent / "group_vars" / "celery_workers.yml").read_text())
    nodes = workers["hosts"][W2]["celery_worker_nodes"]
    nodes[1]["queues"] = [{"name": "urgent", "max_priority": 5}]
    variant = write_inventory(tmp_path, document, SANDBOX_INVENTORY)
    before = fingerprint([BROKER, W1, W2], SANDBOX_INVENTORY)

    done = deploy(variant)

    assert done.returncode != 0
    assert (f"{BROKER}: queue urgent exists on the broker with x-max-priority 10, but the inventory declares it with "
            f"max_priority 5 (node urgent@{W2})") in done.stdout, done.stdout[-3000:]
    assert "rabbitmqctl delete_queue -p celery urgent" in done.stdout
    assert all(r["changed"] == 0 for r in recap(done.stdout).values()), done.stdout[-3000:]
    assert fingerprint([BROKER, W1, W2], SANDBOX_INVENTORY) == before


def test_redis_stopped_fails_health_naming_the_redis_host_and_workers_keep_consuming(fleet):
    """Redis down: health FAILs on every worker host naming rd-redis; tasks still run.

    A task that ignores its result (record) runs as usual. A task whose result cannot be stored runs
    too, but its result is lost: the worker retries the backend, then logs the error, and callers
    waiting on it time out. Health reports the backend down meanwhile.
    """
    ledger = f"down-{uuid.uuid4().hex[:8]}"
    _ssh(REDIS, "systemctl stop redis-server.service")
    try:
        env = dict(os.environ, NO_COLOR="1")
        done = subprocess.run([str(ROOT / ".venv" / "bin" / "fleetctl"), "health",
                               "--inventory", str(SANDBOX_INVENTORY)],
                              capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
        assert done.returncode == 1, done.stdout
        for host in (W1, W2):
            row = next(line for line in done.stdout.splitlines() if line.startswith(host + " "))
            assert "FAIL" in row and "result backend Redis on rd-redis" in row and "unreachable" in row, row
        _python(W1, f"app.send_task('celery_app.tasks.examples.record', ({ledger!r},), queue='celery',"
                    " ignore_result=True)")
        assert len(_wait_records(W2, ledger, 1)) == 1
        # A task whose result the worker cannot store runs; its result is lost, and the worker's log
        # names the task and the error that follows (the client here has no result backend of its own,
        # so it sends without subscribing).
        stored = _python(W1, "app.conf.result_backend = None\nprint(app.send_task("
                             "'celery_app.tasks.examples.add', (2, 3), queue='celery').id)").strip()
        logged = _wait_log(W2, stored, within=120)
        assert "ConnectionError" in logged and f"add[{stored}] received" in logged, logged
    finally:
        _ssh(REDIS, "systemctl start redis-server.service")
