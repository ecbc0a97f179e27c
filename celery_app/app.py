"""The fleet's Celery application; each worker node swaps in its own durable broadcast queues."""
from __future__ import annotations

from celery import Celery, signals

from celery_app.broadcast import broadcast_queue, is_broadcast

app = Celery("celery_app")
app.config_from_object("celery_app.config")


def node_queues(queues, broadcast_names, node):
    """queues with each sender-side broadcast entry replaced by node's durable queue of that name."""
    plain = [queue for queue in queues if not is_broadcast(queue)]
    return [*plain, *(broadcast_queue(name, node) for name in broadcast_names)]


@signals.celeryd_init.connect
def _use_node_broadcast_queues(sender=None, conf=None, instance=None, **_):
    """Give this worker node (sender: its full name) its per-node broadcast queues before -Q selects them."""
    conf.task_queues = node_queues(conf.task_queues, conf.fleet_broadcast_queues, sender)
    amqp = instance.app.amqp
    if "queues" in vars(amqp):  # already built from the sender-side list: rebuild
        amqp.queues = conf.task_queues
        amqp.router = amqp.Router()
