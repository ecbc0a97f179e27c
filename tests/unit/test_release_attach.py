"""celery_app.fleet.attach: the fleet's part of any app, its safety defaults only where the app left Celery's."""
from __future__ import annotations

from pathlib import Path

from celery import Celery
from kombu import Queue

from celery_app.fleet import attach
from celery_app.settings import settings_from

SETTINGS = settings_from({"CELERY_BROKER_URL": "amqp://celery:pw@mq:5672/celery",
                          "CELERY_BROADCAST_QUEUES": "broadcast",
                          "CELERY_QUEUE_OPTIONS": '{"urgent": {"max_priority": 10}}'}, {})


def _app(**conf) -> Celery:
    app = Celery("shop", set_as_current=False)
    app.conf.update(conf)
    return attach(app, SETTINGS)


def test_safety_defaults_apply_where_the_app_left_celerys_default():
    conf = _app().conf
    assert conf.worker_prefetch_multiplier == 1 and conf.accept_content == ["json"]
    assert conf.broker_transport_options == {"confirm_publish": True} and conf.broker_heartbeat == 30


def test_what_the_app_sets_itself_wins():
    conf = _app(worker_prefetch_multiplier=8, accept_content=["json", "msgpack"]).conf
    assert conf.worker_prefetch_multiplier == 8 and conf.accept_content == ["json", "msgpack"]


def test_the_deployment_gives_broker_queues_routes_tasks_and_heartbeat():
    app = _app(task_routes={"shop.*": {"queue": "orders"}}, task_queues=[Queue("orders")])
    conf = app.conf
    assert conf.broker_url == "amqp://celery:pw@mq:5672/celery"
    assert [q.name for q in conf.task_queues] == ["orders", "urgent", "broadcast"]
    assert conf.task_routes[0]["celery_app.tasks.maintenance.*"] == {"queue": "broadcast"}
    assert conf.task_routes[1] == {"shop.*": {"queue": "orders"}}  # the app's routes, as they were
    assert "celery_app.tasks.maintenance" in conf.include and "fleet-heartbeat" in conf.beat_schedule
    assert app.amqp.router.route({}, "shop.tasks.pay")["queue"].name == "orders"
    assert app.amqp.router.route({}, "celery_app.tasks.heartbeat.heartbeat")["queue"].name == "celery"
    assert Path(conf.fleet_heartbeat_file) == SETTINGS.heartbeat_file
    assert conf.worker_send_task_events and conf.task_send_sent_event  # task events for Flower


def test_the_deployment_turns_task_events_off_even_where_the_app_turned_them_on():
    app = Celery("shop", set_as_current=False)
    app.conf.update(worker_send_task_events=True)
    conf = attach(app, settings_from({"CELERY_TASK_EVENTS": "0"}, {})).conf
    assert not conf.worker_send_task_events and not conf.task_send_sent_event
