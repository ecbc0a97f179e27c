"""Celery configuration of the fleet app; values from celery_app.settings (environment, then /etc/conf.d/celery)."""
from celery_app.broadcast import broadcast_queue as _broadcast_queue
from celery_app.fleet import option_queue as _queue
from celery_app.settings import broker_tls_options as _broker_tls_options
from celery_app.settings import load_settings as _load_settings

_settings = _load_settings()


broker_url = _settings.broker_url
# amqps://: the broker's certificate and address are verified (CELERY_BROKER_CA_FILE, or the system's
# CAs), and the client certificate is presented when CELERY_BROKER_CERT_FILE is set.
broker_use_ssl = _broker_tls_options(_settings)
result_backend = _settings.result_backend
# Seconds a result is kept (Redis: the TTL of its key); CELERY_RESULT_EXPIRES, celery_worker_result_expires.
result_expires = _settings.result_expires
# Task events (task-sent, -received, -started, -succeeded...) for Flower and other event monitors:
# on unless CELERY_TASK_EVENTS is 0 (celery_worker_task_events).
worker_send_task_events = _settings.task_events
task_send_sent_event = _settings.task_events
include = [
    "celery_app.tasks.examples",
    "celery_app.tasks.heartbeat",
    "celery_app.tasks.maintenance",
]

# Serialization: JSON only; pickle would let anyone who can publish run code on the workers. A
# message of another content type (pickle) is refused unread, logged, and dropped, never requeued.
accept_content = ["json"]
result_accept_content = ["json"]
task_serializer = "json"
result_serializer = "json"
timezone = "UTC"
enable_utc = True

# Acknowledgement: early by default (at most once); IdempotentTask opts into late acks per task.
task_acks_late = False
task_reject_on_worker_lost = False
# One message reserved per process: slower on tiny tasks, but nothing waits behind a long task.
worker_prefetch_multiplier = 1
# Publisher confirms: each publish waits for the broker's ack, so a sent task is never silently lost.
broker_transport_options = {"confirm_publish": True}
# AMQP heartbeats: a dead broker connection is noticed within about a minute.
broker_heartbeat = 30
# On connection loss, cancel running late-ack tasks: they are redelivered anyway, so no double runs.
worker_cancel_long_running_tasks_on_connection_loss = True
# Keep retrying the broker at startup (the broker may boot after the workers).
broker_connection_retry_on_startup = True

# Routing. Named queues bind to a direct exchange of the same name; queues named only in the
# inventory (-Q) are created the same way. Broadcast queues: see celery_app/broadcast.py.
fleet_broadcast_queues = list(_settings.broadcast_queues)
task_default_queue = "celery"
# Queues with options (CELERY_QUEUE_OPTIONS: max_priority, a topic exchange...) are declared as given,
# here as on every node, so that publisher and consumer declare them alike.
fleet_queue_options = dict(_settings.queue_options)
# On a broker cluster the queues are quorum queues (CELERY_QUEUE_TYPE), replicated on every broker node;
# queues only named in -Q get the same type. Celery then uses per-consumer prefetch (quorum queues have
# no global QoS: worker_detect_quorum_queues, on by default).
fleet_queue_type = _settings.queue_type
task_default_queue_type = fleet_queue_type
task_create_missing_queue_type = fleet_queue_type
task_queues = [
    *(_queue(name, fleet_queue_options.get(name), fleet_queue_type) for name in ("celery", "calc", "reports")),
    *(_queue(name, options, fleet_queue_type) for name, options in fleet_queue_options.items()
      if name not in ("celery", "calc", "reports") and name not in fleet_broadcast_queues),
    *(_broadcast_queue(name) for name in fleet_broadcast_queues),
]
task_routes = {
    "celery_app.tasks.examples.add": {"queue": "calc"},
    "celery_app.tasks.examples.mul": {"queue": "calc"},
    "celery_app.tasks.examples.xsum": {"queue": "calc"},
    "celery_app.tasks.examples.report": {"queue": "reports"},
    "celery_app.tasks.examples.whoami": {"queue": "celery"},
    "celery_app.tasks.heartbeat.heartbeat": {"queue": "celery"},
    # Every maintenance task goes to the first broadcast queue, so every node runs it.
    "celery_app.tasks.maintenance.*": {"queue": fleet_broadcast_queues[0]},
}

# Beat (one host, see celery_beat in the inventory): the heartbeat every 30 s. A heartbeat older
# than its period is dropped, not run late, and its result is not kept (the file is the record).
beat_schedule = {
    "heartbeat": {
        "task": "celery_app.tasks.heartbeat.heartbeat",
        "schedule": 30.0,
        "options": {"expires": 25, "ignore_result": True},
    },
}

# Where tasks keep state on the host that runs them (see celery_app/README.md).
fleet_state_dir = str(_settings.state_dir)
fleet_heartbeat_file = str(_settings.heartbeat_file)
fleet_log_dir = str(_settings.log_dir)
