"""The fleet's part of any Celery app: its queues, routes, tasks, heartbeat and safety defaults.

``attach(app)`` gives an application (the bundled one, or an operator's own loaded by
``celery_app.loader``) what the fleet needs of it, with no line of fleet code in the application:

- the deployment's broker and result backend (``/etc/conf.d/celery``: the fleet runs both);
- the broadcast queues (each node swaps in its own durable queues, ``_use_node_broadcast_queues``),
  the queues with options of the inventory, and the routes of the fleet's tasks, ahead of the app's
  own routes (they match only the fleet's task names);
- the maintenance tasks (``celery_app.tasks.maintenance``) and the beat heartbeat
  (``celery_app.tasks.heartbeat``), registered as shared tasks on every app;
- the safety settings in ``SAFETY_DEFAULTS``, each only where the app left Celery's default: what
  the app sets itself wins;
- task events published without publisher confirms (``celery_app.events``): tasks keep theirs.
"""
from __future__ import annotations

from typing import Any

from celery import signals
from celery.app.defaults import DEFAULTS as _CELERY_DEFAULTS
from kombu import Exchange, Queue

from celery_app.broadcast import broadcast_queue, is_broadcast
from celery_app.events import use_unconfirmed_events
from celery_app.settings import Settings, broker_tls_options, load_settings

# The fleet's task modules: imported by every app the fleet runs.
TASK_MODULES = ("celery_app.tasks.heartbeat", "celery_app.tasks.maintenance")
HEARTBEAT_TASK = "celery_app.tasks.heartbeat.heartbeat"
HEARTBEAT_QUEUE = "celery"  # health reads the heartbeat file on the hosts consuming it
HEARTBEAT_PERIOD = 30.0

# Applied where the app leaves Celery's default (see module docstring); what each is for:
SAFETY_DEFAULTS: dict[str, Any] = {
    # JSON only: pickle would let anyone who can publish run code on the workers.
    "accept_content": ["json"],
    "result_accept_content": ["json"],
    "task_serializer": "json",
    "result_serializer": "json",
    # One message reserved per process: nothing waits behind a long task.
    "worker_prefetch_multiplier": 1,
    # Publisher confirms: a sent task is never silently lost.
    "broker_transport_options": {"confirm_publish": True},
    # AMQP heartbeats: a dead broker connection is noticed within about a minute.
    "broker_heartbeat": 30,
    "broker_connection_retry_on_startup": True,
    "worker_cancel_long_running_tasks_on_connection_loss": True,
}


def node_queues(queues, broadcast_names, node, queue_type="classic"):
    """queues with each sender-side broadcast entry replaced by node's durable queue of that name."""
    plain = [queue for queue in queues if not is_broadcast(queue)]
    return [*plain, *(broadcast_queue(name, node, queue_type) for name in broadcast_names)]


def option_queue(name: str, options: dict | None = None, queue_type: str = "classic") -> Queue:
    """Queue name bound to its exchange: by default a direct exchange of the same name and key.

    options (CELERY_QUEUE_OPTIONS, from the inventory): exchange, exchange_type, routing_key, and
    max_priority (the queue argument x-max-priority: RabbitMQ then delivers higher priorities first).
    queue_type "quorum" (CELERY_QUEUE_TYPE, a broker cluster): x-queue-type quorum, unless the queue has
    a max_priority (RabbitMQ 3.x quorum queues have no priorities: it stays classic).
    """
    options = options or {}
    exchange = Exchange(str(options.get("exchange") or name), type=str(options.get("exchange_type") or "direct"))
    if options.get("max_priority"):
        arguments = {"x-max-priority": int(options["max_priority"])}
    else:
        arguments = {"x-queue-type": "quorum"} if queue_type == "quorum" else None
    return Queue(name, exchange, routing_key=str(options.get("routing_key") or name), queue_arguments=arguments)


def safety_overrides(conf: Any) -> dict[str, Any]:
    """The SAFETY_DEFAULTS the app left at Celery's default (those it set itself stay as they are)."""
    return {key: value for key, value in SAFETY_DEFAULTS.items() if conf.get(key) == _CELERY_DEFAULTS.get(key)}


def fleet_routes(broadcast: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Routes of the fleet's own tasks: maintenance to the first broadcast queue, the heartbeat to celery."""
    return {HEARTBEAT_TASK: {"queue": HEARTBEAT_QUEUE}, "celery_app.tasks.maintenance.*": {"queue": broadcast[0]}}


def _routes_list(routes: Any) -> list:
    if not routes:
        return []
    return list(routes) if isinstance(routes, (list, tuple)) else [routes]


def attach(app: Any, settings: Settings | None = None) -> Any:
    """app with the fleet's queues, routes, tasks, heartbeat, deployment settings and safety defaults."""
    settings = settings or load_settings()
    conf = app.conf
    broadcast = tuple(settings.broadcast_queues)
    options = dict(settings.queue_options)
    own = [queue for queue in (conf.task_queues or ()) if not is_broadcast(queue)]
    names = {queue.name for queue in own}
    schedule = dict(conf.beat_schedule or {})
    schedule.setdefault("fleet-heartbeat", {"task": HEARTBEAT_TASK, "schedule": HEARTBEAT_PERIOD,
                                            "options": {"expires": 25, "ignore_result": True}})
    conf.update(
        safety_overrides(conf),
        broker_url=settings.broker_url,
        broker_use_ssl=broker_tls_options(settings),
        result_backend=settings.result_backend,
        result_expires=settings.result_expires,
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        fleet_broadcast_queues=list(broadcast),
        fleet_queue_options=options,
        fleet_queue_type=settings.queue_type,
        task_default_queue_type=settings.queue_type,
        task_create_missing_queue_type=settings.queue_type,
        task_queues=[*own, *(option_queue(name, opts, settings.queue_type) for name, opts in options.items()
                             if name not in names and name not in broadcast),
                     *(broadcast_queue(name) for name in broadcast)],
        task_routes=[fleet_routes(broadcast), *_routes_list(conf.task_routes)],
        include=[*conf.include, *(module for module in TASK_MODULES if module not in conf.include)],
        beat_schedule=schedule,
        fleet_state_dir=str(settings.state_dir),
        fleet_heartbeat_file=str(settings.heartbeat_file),
        fleet_log_dir=str(settings.log_dir),
    )
    use_unconfirmed_events(app)
    return app


@signals.celeryd_init.connect
def _use_node_broadcast_queues(sender=None, conf=None, instance=None, **_):
    """Give this worker node (sender: its full name) its per-node broadcast queues before -Q selects them."""
    conf.task_queues = node_queues(conf.task_queues, conf.fleet_broadcast_queues, sender,
                                   conf.get("fleet_queue_type", "classic"))
    amqp = instance.app.amqp
    if "queues" in vars(amqp):  # already built from the sender-side list: rebuild
        amqp.queues = conf.task_queues
        amqp.router = amqp.Router()
