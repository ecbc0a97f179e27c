"""Configuration: env-file parsing, settings precedence and defaults, safe Celery defaults, routing table."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from celery_app.settings import DEFAULTS, parse_env_file, read_env_file, settings_from, split_list


def test_env_file_parses_plain_quoted_and_commented_lines():
    # The SPACED line ends in three spaces, the last written \x20 (editors and linters strip trailing blanks).
    text = """# managed by ansible
; another comment
CELERY_APP=celery_app
CELERYD_NODES="calc reports"
CELERYD_OPTS='-Q:calc calc,celery,broadcast -c:calc 2'
  SPACED  =  value with spaces  \x20
EMPTY=
"""
    assert parse_env_file(text) == {
        "CELERY_APP": "celery_app",
        "CELERYD_NODES": "calc reports",
        "CELERYD_OPTS": "-Q:calc calc,celery,broadcast -c:calc 2",
        "SPACED": "value with spaces",
        "EMPTY": "",
    }


def test_env_file_handles_escapes_and_line_continuations():
    text = 'A="say \\"hi\\" \\\\ \\$HOME"\nB=one\\\ntwo\nC="multi\\\nline"\nD=keep\\ \n'
    assert parse_env_file(text) == {"A": 'say "hi" \\ $HOME', "B": "onetwo", "C": "multiline", "D": "keep "}


def test_env_file_skips_lines_without_equals_or_with_invalid_keys():
    assert parse_env_file("junk line\n1BAD=x\nexport X=1\nGOOD=yes") == {"GOOD": "yes"}


def test_missing_or_unreadable_env_file_gives_no_values(tmp_path):
    assert read_env_file(tmp_path / "absent") == {}
    assert read_env_file(tmp_path) == {}  # a directory cannot be read as a file


def test_environment_wins_over_env_file_and_file_over_defaults():
    environ = {"CELERY_BROKER_URL": "amqp://env@h//", "CELERY_LOG_DIR": "  "}
    file_values = {"CELERY_BROKER_URL": "amqp://file@h//", "CELERY_BROADCAST_QUEUES": "bcast, urgent ,",
                   "CELERY_LOG_DIR": "/srv/log"}
    settings = settings_from(environ, file_values)
    assert settings.broker_url == "amqp://env@h//"
    assert settings.broadcast_queues == ("bcast", "urgent")
    assert str(settings.log_dir) == "/srv/log"  # a blank environment value does not hide the file's
    assert settings.result_backend == DEFAULTS["CELERY_RESULT_BACKEND"]


def test_defaults_apply_when_nothing_is_set():
    settings = settings_from({}, {})
    assert settings.broadcast_queues == ("broadcast",)
    assert str(settings.heartbeat_file) == "/var/lib/celery/heartbeat"
    assert str(settings.state_dir) == "/var/lib/celery"
    assert str(settings.log_dir) == "/var/log/celery"
    assert split_list(",,") == ()


def test_app_reads_settings_from_the_env_file_from_any_directory(tmp_path):
    env_file = tmp_path / "celery"
    env_file.write_text('CELERY_BROKER_URL="amqp://u:p@broker.example:5672/celery"\n'
                        "CELERY_BROADCAST_QUEUES=fleet,urgent\nCELERY_HEARTBEAT_FILE=/srv/hb\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY")}
    env.update(CELERY_ENV_FILE=str(env_file))
    probe = (
        "import json; from celery_app import app; c = app.conf; "
        "print(json.dumps({'broker': c.broker_url, 'hb': c.fleet_heartbeat_file, "
        "'fanout': [[q.name, q.exchange.name, q.exchange.type] for q in c.task_queues if q.exchange.type == 'fanout'],"
        "'route': app.amqp.router.route({}, 'celery_app.tasks.maintenance.host_report')['queue'].exchange.name}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    seen = json.loads(done.stdout)
    assert seen["broker"] == "amqp://u:p@broker.example:5672/celery"
    assert seen["hb"] == "/srv/hb"
    assert seen["fanout"] == [["fleet", "fleet", "fanout"], ["urgent", "urgent", "fanout"]]
    assert seen["route"] == "fleet"


def test_only_json_is_accepted_and_produced():
    from celery_app import app

    assert list(app.conf.accept_content) == ["json"]
    assert list(app.conf.result_accept_content) == ["json"]
    assert app.conf.task_serializer == "json"
    assert app.conf.result_serializer == "json"


def test_safety_settings_are_on():
    from celery_app import app

    conf = app.conf
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["confirm_publish"] is True
    assert conf.broker_heartbeat and conf.broker_heartbeat > 0
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is True
    assert conf.broker_connection_retry_on_startup is True
    assert conf.task_default_queue == "celery"
    assert conf.task_acks_late is False  # late acks only per idempotent task


def test_late_acks_apply_only_to_tasks_marked_idempotent():
    from celery_app.tasks.examples import add, report, whoami
    from celery_app.tasks.heartbeat import heartbeat
    from celery_app.tasks.maintenance import MAINTENANCE

    for task in (add, whoami, heartbeat, *MAINTENANCE.values()):
        assert task.acks_late and task.reject_on_worker_lost, task.name
    assert not report.acks_late


@pytest.mark.parametrize("task, queue", [
    ("celery_app.tasks.examples.add", "calc"),
    ("celery_app.tasks.examples.mul", "calc"),
    ("celery_app.tasks.examples.xsum", "calc"),
    ("celery_app.tasks.examples.report", "reports"),
    ("celery_app.tasks.examples.whoami", "celery"),
    ("celery_app.tasks.heartbeat.heartbeat", "celery"),
])
def test_example_tasks_are_routed_to_their_named_queue(task, queue):
    from celery_app import app

    assert app.amqp.router.route({}, task)["queue"].name == queue


def test_maintenance_tasks_are_routed_to_the_broadcast_fanout_exchange():
    from celery_app import app
    from celery_app.tasks.maintenance import MAINTENANCE

    for task in MAINTENANCE.values():
        queue = app.amqp.router.route({}, task.name)["queue"]
        assert (queue.exchange.name, queue.exchange.type) == ("broadcast", "fanout")


def test_beat_sends_the_heartbeat_every_30_seconds_without_keeping_results():
    from celery_app import app

    entry = app.conf.beat_schedule["heartbeat"]
    assert entry["task"] == "celery_app.tasks.heartbeat.heartbeat"
    assert entry["schedule"] == 30.0
    assert entry["options"]["ignore_result"] is True and entry["options"]["expires"] < 30


def test_worker_node_gets_durable_per_node_broadcast_queues():
    from kombu import Queue

    from celery_app.app import node_queues
    from celery_app.broadcast import QUEUE_MESSAGE_TTL, broadcast_queue

    queues = node_queues([Queue("calc"), broadcast_queue("broadcast")], ["broadcast", "urgent"], "calc@h1")
    by_name = {queue.name: queue for queue in queues}
    assert set(by_name) == {"calc", "broadcast.calc@h1", "urgent.calc@h1"}
    mine = by_name["broadcast.calc@h1"]
    assert mine.alias == "broadcast" and mine.durable and not mine.auto_delete
    assert (mine.exchange.name, mine.exchange.type, mine.exchange.durable) == ("broadcast", "fanout", True)
    assert mine.queue_arguments["x-message-ttl"] == QUEUE_MESSAGE_TTL * 1000


def test_queue_type_quorum_gives_quorum_task_and_broadcast_queues_but_a_priority_queue_stays_classic():
    from celery_app.broadcast import broadcast_queue
    from celery_app.fleet import option_queue

    assert settings_from({"CELERY_QUEUE_TYPE": "quorum"}, {}).queue_type == "quorum"
    assert settings_from({}, {}).queue_type == "classic"
    assert option_queue("orders", {}, "quorum").queue_arguments == {"x-queue-type": "quorum"}
    assert option_queue("urgent", {"max_priority": 10}, "quorum").queue_arguments == {"x-max-priority": 10}
    assert option_queue("orders").queue_arguments is None
    assert broadcast_queue("broadcast", "calc@h1", "quorum").queue_arguments["x-queue-type"] == "quorum"
    assert "x-queue-type" not in broadcast_queue("broadcast", "calc@h1").queue_arguments
