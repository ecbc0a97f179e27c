"""Task events sent without publisher confirms, on a channel of their own beside the tasks' one.

The fleet turns publisher confirms on (``confirm_publish``): py-amqp then waits for the broker's
confirm after every publish on the connection, events included. A task's ``task-sent`` event leaves on
the task producer's channel, so with events on, every ``send_task`` waits for two round trips instead
of one; the worker's batches of task events wait too. Events gain nothing from the wait: they are
transient messages to transient queues (monitors such as Flower tolerate gaps, a broker restart loses
them anyway). ``UnconfirmedEventDispatcher`` publishes each event on a second channel of the same
connection that never enters confirm mode; tasks keep their confirms. The bundled app
(celery_app.app) and ``celery_app.fleet.attach`` (an operator's own app) install it, unless the app
brings a dispatcher class of its own.
"""
from __future__ import annotations

from typing import Any

from celery.events.dispatcher import EventDispatcher
from kombu import Producer

CELERY_DISPATCHER = "celery.events.dispatcher:EventDispatcher"
DISPATCHER = "celery_app.events:UnconfirmedEventDispatcher"
_SIDE = "_fleet_unconfirmed_events"  # the side producer, kept on the kombu Connection it belongs to


def confirming(channel: Any) -> bool:
    """Whether publishing on channel waits for the broker's confirm (py-amqp with confirm_publish)."""
    confirm = getattr(channel, "basic_publish_confirm", None)
    return confirm is not None and getattr(channel, "basic_publish", None) == confirm


def unconfirmed_producer(producer: Any) -> Any:
    """producer itself, or, when its channel waits for confirms, a producer on a side channel that does not.

    The side channel is opened once per broker connection and kept on the kombu Connection (a pooled
    connection serves one thread at a time, and so does its side channel); a new one replaces it when the
    connection was re-established or the channel closed.
    """
    channel = producer.channel
    if not confirming(channel):
        return producer
    connection = producer.connection
    side = getattr(connection, _SIDE, None)
    if side is None or not side.channel.is_open or side.channel.connection is not channel.connection:
        side_channel = connection.channel()
        side_channel.basic_publish = side_channel._basic_publish  # never confirm_select: no confirm mode
        side = Producer(side_channel, auto_declare=False)
        setattr(connection, _SIDE, side)
    return side


class UnconfirmedEventDispatcher(EventDispatcher):
    """Celery's event dispatcher, publishing every event without waiting for a publisher confirm."""

    def _publish(self, event, producer, routing_key, **kwargs):
        if producer is not None:
            producer = unconfirmed_producer(producer)
        return super()._publish(event, producer, routing_key, **kwargs)


def use_unconfirmed_events(app: Any) -> None:
    """app's events go out without confirms, unless the app set a dispatcher class of its own."""
    events = app.events
    if events.dispatcher_cls == CELERY_DISPATCHER:
        events.dispatcher_cls = DISPATCHER
        vars(events).pop("Dispatcher", None)  # built from the former class: build it again
        if "amqp" in vars(app):
            vars(app.amqp).pop("_event_dispatcher", None)
