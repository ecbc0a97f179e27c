"""The deployed broker is hardened: no guest, a least-privileged fleet user, no management, cookie, limits."""

from __future__ import annotations

import json
import re
import uuid

import pytest

from support.deploy import changed_tasks, deploy, recap

BROKER, WORKER = "broker", "worker1"
HOSTS = ["broker", "worker1", "worker2"]
NODE = f"calc@{WORKER}"
# Tries, with the fleet user of the worker's env file, what Celery needs and what it must not get.
# Prints {attempt: "ok" | "<reply code> <reply text>"}; never the broker URL (it holds the password).
_ATTEMPTS = r'''
import json
from kombu import Connection, Exchange, Producer, Queue
from celery_app.settings import load_settings

URL = load_settings().broker_url


def attempt(action, url=URL):
    try:
        with Connection(url, connect_timeout=5, transport_options={"confirm_publish": True, "max_retries": 1}) as conn:
            action(conn.default_channel)
        return "ok"
    except Exception as exc:
        return f"{getattr(exc, 'reply_code', type(exc).__name__)} {getattr(exc, 'reply_text', '')}".strip()


def task_queue_round_trip(channel):
    exchange = Exchange("hardening.probe", auto_delete=True)
    queue = Queue("hardening.probe", exchange, "hardening.probe", auto_delete=True)(channel)
    queue.declare()
    Producer(channel).publish({"probe": 1}, exchange=exchange, routing_key="hardening.probe", serializer="json")
    assert queue.get(no_ack=True).payload == {"probe": 1}
    queue.delete()


def bind_to(exchange_name):
    def action(channel):
        Queue("hardening.tap", Exchange(exchange_name, type="topic", passive=True), "#",
              exclusive=True)(channel).declare()
    return action


def publish_to(exchange_name):
    return lambda channel: Producer(channel).publish({"x": 1}, exchange=exchange_name, routing_key="x",
                                                     serializer="json")


print(json.dumps({
    "task queue round trip": attempt(task_queue_round_trip),
    "bind to amq.rabbitmq.trace": attempt(bind_to("amq.rabbitmq.trace")),
    "bind to amq.topic": attempt(bind_to("amq.topic")),
    "publish to amq.topic": attempt(publish_to("amq.topic")),
    "connect to vhost /": attempt(lambda channel: None, URL.rsplit("/", 1)[0] + "//"),
}))
'''


def _json(host, command: str):
    return json.loads(host.check_output(f"{command} --formatter json"))


@pytest.fixture(scope="module")
def broker(deployed_fleet):
    return deployed_fleet.host(BROKER)


@pytest.fixture(scope="module")
def permissions(broker) -> dict[str, str]:
    """The fleet user's permissions on its vhost: {configure, write, read} regexes."""
    rows = _json(broker, "rabbitmqctl -q list_user_permissions celery")
    assert len(rows) == 1
    return rows[0]


@pytest.fixture(scope="module")
def attempts(deployed_fleet) -> dict[str, str]:
    worker = deployed_fleet.host(WORKER)
    result = worker.run(f"cd /tmp && /opt/celery/venv/bin/python - <<'EOF'\n{_ATTEMPTS}\nEOF")
    assert result.rc == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def _celery_names(app) -> dict[str, list[str]]:
    """Names of the queues and exchanges the fleet's Celery declares, made by Celery's and the app's own code."""
    from celery_app.broadcast import REPLY_PREFIX, broadcast_queue

    mailbox = app.control.mailbox
    receiver = app.events.Receiver(None)
    queues = [q.name for q in app.conf.task_queues] + [
        broadcast_queue("broadcast", NODE).name,
        mailbox.get_queue(NODE).name,
        mailbox.reply_queue.name,
        receiver.queue.name,
        app.backend.binding.name,
        REPLY_PREFIX + uuid.uuid4().hex,
        "health-stray",  # tests/health: a node on a queue that only its -Q names
    ]
    exchanges = [q.exchange.name for q in app.conf.task_queues] + [
        mailbox.exchange.name, mailbox.reply_exchange.name, receiver.exchange.name]
    return {"queues": queues, "exchanges": exchanges}


def test_guest_user_is_gone_and_cannot_log_in(broker):
    assert "guest" not in {u["user"] for u in _json(broker, "rabbitmqctl -q list_users")}
    assert broker.run("rabbitmqctl -q authenticate_user guest guest").rc != 0


def test_fleet_user_has_no_tags_and_permissions_on_its_own_vhost_only(broker, permissions):
    users = {u["user"]: u["tags"] for u in _json(broker, "rabbitmqctl -q list_users")}
    assert users["celery"] == []
    assert permissions["vhost"] == "celery"
    for kind in ("configure", "write", "read"):
        assert permissions[kind] not in (".*", "^.*$", "")


def test_every_queue_and_exchange_celery_declares_is_permitted(permissions):
    from celery_app.app import app

    names = _celery_names(app)
    for name in names["queues"] + names["exchanges"]:
        assert re.search(permissions["configure"], name), f"configure refuses {name}"
        assert re.search(permissions["read"], name), f"read refuses {name}"
    for name in names["exchanges"] + ["amq.default"]:
        assert re.search(permissions["write"], name), f"write refuses {name}"


def test_fleet_user_cannot_touch_broker_owned_names(permissions):
    for name in ("amq.rabbitmq.trace", "amq.topic", "amq.direct", "amq.gen-x"):
        for kind in ("configure", "write", "read"):
            assert not re.search(permissions[kind], name), f"{kind} allows {name}"
    assert not re.search(permissions["configure"], "amq.default")


def test_fleet_user_round_trips_a_task_queue_of_its_own(attempts):
    assert attempts["task queue round trip"] == "ok"


@pytest.mark.parametrize("attempt", ["bind to amq.rabbitmq.trace", "bind to amq.topic", "publish to amq.topic"])
def test_fleet_user_is_refused_broker_owned_exchanges(attempts, attempt):
    assert attempts[attempt].startswith("403 ACCESS_REFUSED"), attempts[attempt]


def test_fleet_user_is_refused_other_vhosts(attempts):
    assert attempts["connect to vhost /"] != "ok"
    assert "access to vhost '/' refused" in attempts["connect to vhost /"], attempts["connect to vhost /"]


def test_management_plugin_is_off_and_nothing_listens_for_http_but_the_metrics(broker):
    # The sandbox has a monitoring host: rabbitmq_prometheus (rabbitmq_prometheus_enabled) is the one plugin.
    explicit = re.findall(r'"name"\s*:\s*"([^"]+)"', broker.run("rabbitmq-plugins -q list -E --formatter json").stdout)
    assert explicit == ["rabbitmq_prometheus"]
    enabled = re.findall(r'"name"\s*:\s*"([^"]+)"', broker.run("rabbitmq-plugins -q list -e --formatter json").stdout)
    assert "rabbitmq_management" not in enabled
    listening = broker.check_output("ss -Hltn")
    assert ":15672 " not in listening and ":15671 " not in listening
    assert ":15692 " in listening  # the Prometheus endpoint


def test_erlang_cookie_is_readable_by_rabbitmq_only(broker):
    cookie = broker.file("/var/lib/rabbitmq/.erlang.cookie")
    assert (cookie.user, cookie.group, cookie.mode) == ("rabbitmq", "rabbitmq", 0o400)


def test_broker_runs_with_the_raised_file_descriptor_limit(broker):
    assert broker.check_output("systemctl show -p LimitNOFILE --value rabbitmq-server") == "65536"
    pid = broker.check_output("systemctl show -p MainPID --value rabbitmq-server")
    # systemd cannot exceed the hard limit the container itself runs under.
    ceiling = int(broker.check_output("awk '/Max open files/ {print $5}' /proc/1/limits"))
    assert int(broker.check_output(f"awk '/Max open files/ {{print $4}}' /proc/{pid}/limits")) == min(65536, ceiling)


def test_disk_free_limit_is_the_hosts_ram_not_the_development_default(broker):
    status = _json(broker, "rabbitmq-diagnostics -q status")
    ram = status["vm_memory_high_watermark_limit"] / status["vm_memory_high_watermark_setting"]["relative"]
    assert abs(status["disk_free_limit"] - ram) < 1024 * 1024
    assert status["disk_free_limit"] > 50_000_000
    assert "/etc/rabbitmq/rabbitmq.conf" in status["config_files"]


def test_deploy_takes_back_tags_permissions_and_a_guest_added_by_hand(broker):
    for command in ["set_user_tags celery administrator", "add_vhost hand-made",
                    "set_permissions -p hand-made celery '.*' '.*' '.*'", "add_user guest guest"]:
        broker.check_output(f"rabbitmqctl -q {command}")
    try:
        run = deploy()
        assert run.returncode == 0, run.stdout[-3000:]
        assert changed_tasks(run.stdout) == [
            "broker: rabbitmq : Celery vhost exists, its user has no tags and least permissions on it only, guest is "
            "absent"], run.stdout[-3000:]
        assert {u["user"]: u["tags"] for u in _json(broker, "rabbitmqctl -q list_users")} == {"celery": []}
        assert [row["vhost"] for row in _json(broker, "rabbitmqctl -q list_user_permissions celery")] == ["celery"]
        again = deploy()
        assert changed_tasks(again.stdout) == [], again.stdout[-3000:]
        assert set(recap(again.stdout)) == set(HOSTS)
    finally:
        broker.run("rabbitmqctl -q delete_vhost hand-made")
