"""Broadcast a maintenance task to every Celery node of an inventory and collect one answer per node.

A broadcast has one task id and many executions, so a result backend would keep only one answer
(celery issue #4149). Instead the sender declares an exclusive reply queue of its own, sends the task
(fanout exchange of the first broadcast queue, publisher confirms, ``ignore_result``) with that
queue's name in the ``fleet_reply_to`` header, and every execution publishes its own answer, tagged
with its node name, to it (celery_app/broadcast.py). It consumes until every node the inventory
expects answered, or until the timeout. A node that is down runs the task when it comes back (within
``expires`` and its queue's message TTL); a node runs a given task id once, so re-sending an id reaches
the nodes that missed it without re-running it elsewhere.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleetctl.errors import UnavailableError, UsageError
from fleetctl.inventory import redact

DEFAULT_TIMEOUT = 10.0
DEFAULT_EXPIRES = 3600.0
ANSWER_STATUSES = ("ok", "failed", "skipped")
_POLL = 1.0  # seconds per drain, so broker heartbeats go out while waiting


@dataclass(frozen=True)
class Answer:
    """What one node said (or missing: said nothing in time)."""

    node: str
    status: str
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    hostname: str | None = None
    runtime: float | None = None  # seconds the task ran on the node
    received: float | None = None  # seconds from sending until this answer arrived

    @property
    def host(self) -> str:
        """The inventory host of the node (the part after ``@``)."""
        return self.node.partition("@")[2] or self.node

    @property
    def failed(self) -> bool:
        """The task raised, or graded the node ``fail``."""
        graded_fail = isinstance(self.result, dict) and self.result.get("status") == "fail"
        return self.status == "failed" or (self.status == "ok" and graded_fail)


@dataclass(frozen=True)
class Outcome:
    """The answers to one broadcast, against the nodes the inventory expects."""

    task: str
    task_id: str
    expected: tuple[str, ...]
    answers: tuple[Answer, ...]
    timeout: float

    @property
    def by_node(self) -> dict[str, Answer]:
        return {answer.node: answer for answer in self.answers}

    @property
    def missing(self) -> tuple[str, ...]:
        answered = self.by_node
        return tuple(node for node in self.expected if node not in answered)

    @property
    def unexpected(self) -> tuple[str, ...]:
        return tuple(answer.node for answer in self.answers if answer.node not in self.expected)

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(answer.node for answer in self.answers if answer.failed)

    @property
    def complete(self) -> bool:
        """Every expected node answered (so the wait ended early)."""
        return not self.missing

    @property
    def ok(self) -> bool:
        return self.complete and not self.failed

    def hosts(self) -> dict[str, list[Answer]]:
        """Answers grouped by host, expected nodes first in inventory order, missing ones included."""
        answered = self.by_node
        grouped: dict[str, list[Answer]] = {}
        for node in (*self.expected, *self.unexpected):
            answer = answered.get(node) or Answer(node=node, status="missing")
            grouped.setdefault(answer.host, []).append(answer)
        return grouped


# Input checks (pure).

def resolve_task(name: str, registry: Mapping[str, Any]) -> Any:
    """The maintenance task called name (short or full name)."""
    for short, task in registry.items():
        if name in (short, task.name):
            return task
    known = ", ".join(sorted(registry)) or "none"
    raise UsageError(f"unknown maintenance task {name!r} (known: {known})")


def parse_task_args(text: str | None) -> tuple[list[Any], dict[str, Any]]:
    """(args, kwargs) from ARGS: a JSON list (positional), object (keywords), or nothing."""
    if text is None or not text.strip():
        return [], {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"ARGS is not valid JSON ({exc.msg} at position {exc.pos})") from None
    if isinstance(value, list):
        return value, {}
    if isinstance(value, dict):
        return [], value
    raise UsageError(f"ARGS must be a JSON object or list, not {type(value).__name__}")


def check_arguments(task: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Refuse args/kwargs the task's function cannot take."""
    try:
        inspect.signature(task.run).bind(*args, **kwargs)
    except TypeError as exc:
        raise UsageError(f"ARGS do not fit {task.name}{inspect.signature(task.run)}: {exc}") from None


def answer_from(body: Any, task_id: str) -> Answer | None:
    """The Answer in a reply message body, or None when it is not an answer to task_id."""
    if not isinstance(body, dict) or body.get("task_id") != task_id:
        return None
    node, status = body.get("node"), body.get("status")
    if not isinstance(node, str) or not node or status not in ANSWER_STATUSES:
        return None
    runtime = body.get("runtime")
    return Answer(node=node, status=status, result=body.get("result"), error=body.get("error"),
                  traceback=body.get("traceback"), hostname=body.get("hostname"),
                  runtime=runtime if isinstance(runtime, (int, float)) else None)


# Sending and collecting.

def broadcast(
    app: Any, broker_url: str, queue: str, task: str, args: Sequence[Any], kwargs: Mapping[str, Any], *,
    expected: Sequence[str], timeout: float, expires: float, task_id: str | None = None,
    targets: Sequence[str] | None = None,
) -> Outcome:
    """Send task to every node through broadcast queue and collect answers until all expected or timeout.

    With targets (node names), the task goes to those nodes' own queues ``<queue>.<node>`` only (through
    the default exchange), not to the fanout exchange: one message per target, one task id.
    """
    from amqp.exceptions import AMQPError
    from kombu import Consumer, Queue
    from kombu.exceptions import KombuError

    from celery_app.broadcast import REPLY_HEADER, REPLY_PREFIX, broadcast_exchange, broadcast_queue

    task_id = task_id or str(uuid.uuid4())
    answers: dict[str, Answer] = {}

    def on_message(body: Any, message: Any) -> None:
        answer = answer_from(body, task_id)
        if answer is not None and answer.node not in answers:
            answers[answer.node] = dataclasses.replace(answer, received=time.monotonic() - sent)

    try:
        with app.connection_for_write(broker_url) as conn:
            conn.ensure_connection(max_retries=2, interval_start=0.5, interval_step=0.5, timeout=10)
            channel = conn.channel()
            reply_queue = Queue(REPLY_PREFIX + uuid.uuid4().hex, exclusive=True, auto_delete=True, durable=False)
            reply_queue(channel).declare()
            broadcast_exchange(queue)(channel).declare()
            consumer = Consumer(channel, queues=[reply_queue], callbacks=[on_message], accept=["json"],
                                no_ack=True, on_decode_error=lambda message, exc: None)
            with consumer:
                sent = time.monotonic()
                common = dict(args=list(args), kwargs=dict(kwargs), task_id=task_id,
                              headers={REPLY_HEADER: reply_queue.name}, expires=expires, ignore_result=True,
                              connection=conn)
                if targets is None:
                    app.send_task(task, queue=broadcast_queue(queue), **common)
                for node in targets or ():
                    app.send_task(task, exchange="", routing_key=broadcast_queue(queue, node).name, **common)
                deadline = time.monotonic() + timeout
                while not set(expected) <= answers.keys():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        conn.drain_events(timeout=min(remaining, _POLL))
                    except socket.timeout:
                        conn.heartbeat_check()
    except (OSError, KombuError, AMQPError) as exc:
        raise UnavailableError(f"broker {redact(broker_url)}: {redact(str(exc))}") from None
    return Outcome(task=task, task_id=task_id, expected=tuple(expected), answers=tuple(answers.values()),
                   timeout=timeout)
