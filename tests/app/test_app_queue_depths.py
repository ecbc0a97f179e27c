"""Queue depths as health asks them of a real broker: passively, without declaring anything."""
from __future__ import annotations

import time
import uuid

from kombu import Connection, Exchange, Queue

from fleetctl.health.model import FAIL, OK, Thresholds
from fleetctl.health.verdict import queue_row
from fleetctl.remote.control import CeleryView, inspect_nodes, queue_depths


def test_depths_count_messages_ready_and_consumers_and_a_missing_queue_is_none(broker_url):
    name, missing = f"depth-{uuid.uuid4().hex[:8]}", f"missing-{uuid.uuid4().hex[:8]}"
    # Publisher confirms: both messages are on the queue before its depth is asked (a plain publish is
    # asynchronous, and the broker may count one of two for a moment).
    with Connection(broker_url, transport_options={"confirm_publish": True}) as conn:
        queue = Queue(name, Exchange(name), name, auto_delete=False)
        producer = conn.Producer()
        producer.publish({"n": 1}, exchange=queue.exchange, routing_key=name, declare=[queue], serializer="json")
        producer.publish({"n": 2}, exchange=queue.exchange, routing_key=name, serializer="json")
        try:
            depths = queue_depths(conn, [missing, name, missing + "2"])
            assert depths == {missing: None, name: {"ready": 2, "consumers": 0}, missing + "2": None}
            row = queue_row(name, CeleryView(depths=depths), Thresholds())
            assert row.status == FAIL and row.codes == ("queue_unconsumed",)

            with conn.channel() as channel:
                consumer = conn.Consumer(queue, channel=channel, callbacks=[lambda *_: None], prefetch_count=1)
                consumer.consume()
                depths = queue_depths(conn, [name])
                assert depths[name]["consumers"] == 1
                consumer.cancel()
            with Connection(broker_url) as other:  # a passive check declares nothing
                assert queue_depths(other, [missing]) == {missing: None}
        finally:
            queue.bind(conn.default_channel).delete()


def test_health_view_carries_the_depths_of_the_queues_it_was_asked(broker_url):
    name = f"depth-{uuid.uuid4().hex[:8]}"
    view = inspect_nodes(broker_url, [], 1.0, 3.0, time.monotonic() + 5, queues=[name])
    assert view.error is None and view.depths == {name: None}
    row = queue_row(name, view, Thresholds())
    assert row.status != OK and row.codes == ("queue_undeclared",)
