"""Publishing to a real broker: confirmed batches (all on the queue at the end, rejections named), events."""
from __future__ import annotations

import time
import uuid

import pytest
from kombu import Connection, Exchange, Queue

from celery_app.events import UnconfirmedEventDispatcher, confirming, unconfirmed_producer
from celery_app.publish import UnconfirmedTasks, confirmed_batch
from fleetctl.remote.control import queue_depths

TASK = "celery_app.tasks.examples.add"


def _queue(broker_url: str, arguments: dict | None = None) -> Queue:
    name = f"batch-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name), name, auto_delete=False, queue_arguments=arguments)
    with Connection(broker_url) as conn:
        queue.bind(conn.default_channel).declare()
    return queue


def _delete(broker_url: str, queue: Queue) -> None:
    with Connection(broker_url) as conn:
        queue.bind(conn.default_channel).delete()


def test_every_task_of_a_confirmed_batch_is_on_the_queue_when_the_block_ends(app, broker_url):
    queue = _queue(broker_url)
    try:
        with confirmed_batch(app) as producer:
            ids = [app.send_task(TASK, (n, 1), queue=queue.name, ignore_result=True, producer=producer).id
                   for n in range(300)]
        assert len(set(ids)) == 300
        with Connection(broker_url) as conn:  # no wait: every message was confirmed before the block returned
            assert queue_depths(conn, [queue.name])[queue.name]["ready"] == 300
    finally:
        _delete(broker_url, queue)


def test_a_batch_the_broker_rejects_in_part_raises_naming_each_rejected_task(app, broker_url):
    # A full queue that rejects publishes (x-overflow reject-publish): the broker nacks what it cannot take.
    queue = _queue(broker_url, {"x-max-length": 2, "x-overflow": "reject-publish"})
    try:
        with pytest.raises(UnconfirmedTasks) as raised:
            with confirmed_batch(app) as producer:
                ids = [app.send_task(TASK, (n, 1), queue=queue, ignore_result=True, producer=producer).id
                       for n in range(5)]
        assert raised.value.task_ids == ids[2:]
        assert "3 task(s) not confirmed by the broker (rejected by the broker)" in str(raised.value)
    finally:
        _delete(broker_url, queue)


def test_task_sent_events_leave_without_confirms_while_tasks_keep_theirs(app, broker_url):
    assert app.conf.task_send_sent_event  # the fleet's default
    assert issubclass(app.events.Dispatcher, UnconfirmedEventDispatcher)
    queue = _queue(broker_url)
    events = Queue(f"events-{uuid.uuid4().hex[:8]}", Exchange(app.conf.event_exchange, type="topic"), "task.#",
                   durable=False, auto_delete=False)
    with Connection(broker_url) as conn:
        events.bind(conn.default_channel).declare()
    try:
        with app.producer_or_acquire() as producer:
            task_id = app.send_task(TASK, (1, 1), queue=queue.name, ignore_result=True, producer=producer).id
            assert confirming(producer.channel)  # the task waited for its confirm
            side = unconfirmed_producer(producer)
            assert side.channel is not producer.channel and not confirming(side.channel)
            assert unconfirmed_producer(producer) is side  # one side channel per connection
        with Connection(broker_url) as conn:
            assert queue_depths(conn, [queue.name])[queue.name]["ready"] == 1
            bound = events.bind(conn.default_channel)
            message = None
            for _ in range(50):
                if (message := bound.get(accept=["json"])) is not None:
                    break
                time.sleep(0.1)
            assert message is not None, "no task-sent event arrived"
            assert (message.payload["type"], message.payload["uuid"]) == ("task-sent", task_id)
    finally:
        _delete(broker_url, queue)
        _delete(broker_url, events)
