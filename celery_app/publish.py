"""Many tasks sent with publisher confirms: one wait for the whole batch instead of one round trip per task.

The fleet's ``confirm_publish`` makes every publish wait for the broker's confirm before the next one
leaves (py-amqp's ``basic_publish_confirm``): safe, and a third of the stock publish rate. A
``confirmed_batch`` keeps the guarantee and drops the waits: its channel is in confirm mode, every
publish goes out at once, and when the block ends it waits until the broker has confirmed every
message, raising ``UnconfirmedTasks`` with the ids of those it rejected or never confirmed::

    from celery_app.publish import confirmed_batch

    with confirmed_batch(app) as producer:
        for order in orders:
            ship.apply_async((order,), producer=producer)
        # or: group(ship.s(order) for order in orders).apply_async(producer=producer)

Until the block has returned nothing is confirmed: a caller that must know, re-sends the ids of the
exception (the tasks should then be idempotent: a message the broker took but whose confirm was lost
runs twice). On a transport without confirms (not AMQP), the producer is the app's own, as configured.
"""
from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

CONFIRM_TIMEOUT = 30.0  # seconds the end of a batch waits for the broker's last confirm


class UnconfirmedTasks(Exception):
    """Messages of a batch the broker rejected or did not confirm in time; .task_ids names them."""

    def __init__(self, task_ids: Iterable[str], reason: str) -> None:
        self.task_ids = list(task_ids)
        self.reason = reason
        shown = ", ".join(self.task_ids[:5]) + (", ..." if len(self.task_ids) > 5 else "")
        super().__init__(f"{len(self.task_ids)} task(s) not confirmed by the broker ({reason}): {shown}")


class Confirms:
    """The delivery tags of a confirm-mode channel: published, waiting for the broker, rejected."""

    def __init__(self) -> None:
        self.sent = 0
        self.pending: dict[int, str] = {}  # delivery tag -> task id
        self.rejected: list[str] = []

    def published(self, task_id: str) -> None:
        self.sent += 1  # the broker numbers a confirm-mode channel's publishes from 1
        self.pending[self.sent] = task_id

    def settle(self, tag: int, multiple: bool, ok: bool) -> None:
        """An ack (ok) or nack of tag, or with multiple of every tag up to it."""
        for done in ([t for t in self.pending if t <= tag] if multiple else [tag]):
            task_id = self.pending.pop(done, None)
            if task_id is not None and not ok:
                self.rejected.append(task_id)


def task_id_of(message: Any, fallback: str) -> str:
    """The Celery task id of an AMQP message (its correlation id, or the protocol 2 header), else fallback."""
    properties = getattr(message, "properties", None) or {}
    headers = properties.get("application_headers") or {}
    return str(properties.get("correlation_id") or headers.get("id") or fallback)


def _wait(connection: Any, confirms: Confirms, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while confirms.pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UnconfirmedTasks(confirms.pending.values(), f"no confirm within {timeout:g} s")
        try:
            connection.drain_events(timeout=remaining)
        except socket.timeout:
            pass


@contextmanager
def confirmed_batch(app: Any, timeout: float = CONFIRM_TIMEOUT) -> Iterator[Any]:
    """A producer whose publishes the broker confirms together when the block ends (UnconfirmedTasks if not)."""
    with app.connection_for_write() as connection:
        channel = connection.channel()
        publish = getattr(channel, "_basic_publish", None)
        if publish is None or not hasattr(channel, "confirm_select"):  # not py-amqp: no confirm mode to batch
            channel.close()
            with app.producer_or_acquire() as producer:
                yield producer
            return
        confirms = Confirms()

        def basic_publish(message: Any, *args: Any, **kwargs: Any) -> Any:
            result = publish(message, *args, **kwargs)
            confirms.published(task_id_of(message, f"message {confirms.sent + 1}"))
            return result

        channel.confirm_select()
        channel.events["basic_ack"].add(lambda tag, multiple: confirms.settle(tag, multiple, True))
        channel.events["basic_nack"].add(lambda tag, multiple: confirms.settle(tag, multiple, False))
        channel.basic_publish = basic_publish  # instead of basic_publish_confirm's wait per message
        try:
            yield app.amqp.Producer(channel)
            _wait(connection, confirms, timeout)
            if confirms.rejected:
                raise UnconfirmedTasks(confirms.rejected, "rejected by the broker")
        finally:
            try:
                channel.close()
            except Exception:  # noqa: BLE001 - the connection may be gone already; the block's error stands
                pass
