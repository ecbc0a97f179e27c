"""Tasks sent in a confirmed batch, to a real broker: all on the queue when the block ends, rejections named."""
from __future__ import annotations

import uuid

import pytest
from kombu import Connection, Exchange, Queue

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
