"""Broadcast a maintenance task to every Celery node of an inventory and show one answer per node.

Usage: .venv/bin/python scripts/broadcast.py --inventory PATH --task NAME [--args JSON] [--timeout S]
       [--format text|json] [--expires S] [--task-id ID]
       (make broadcast TASK=name [ARGS=json] [INVENTORY=path] [TIMEOUT=s] [FORMAT=json])

TASK is a maintenance task (celery_app/tasks/maintenance.py: MAINTENANCE), by short or full name.
ARGS is a JSON object (keyword arguments) or list (positional); both are checked against the task's
signature. A bad TASK or ARGS is refused (exit 2) before the inventory is read or anything is sent.

Answers. A broadcast has one task id and many executions, so a result backend would keep only one
answer (celery issue #4149). Instead this command declares an exclusive reply queue of its own, sends
the task (fanout exchange of the first broadcast queue, publisher confirms, ``ignore_result``) with
that queue's name in the ``fleet_reply_to`` header, and every execution publishes its own answer,
tagged with its node name, to it (celery_app/broadcast.py). It consumes until every node the
inventory expects (``<name>@<inventory_hostname>`` of each celery_workers host) answered, returning
at once, or until TIMEOUT; expected nodes without an answer are reported missing. Answers from nodes
not in the inventory are shown as unexpected.

Host down. Each node consumes its own durable queue bound to the fanout exchange, so a node that is
down when the broadcast is sent is reported missing now, and runs the task when it comes back, if
that is within EXPIRES (default 3600 s; the task's ``expires``, after which the node discards it) and
the queue's 24 h message TTL. A node runs a given task id once: its ledger answers a redelivered or
re-sent id (``--task-id`` of an earlier call) with ``skipped``, so re-sending with the same id reaches
the nodes that missed it without re-running it elsewhere. A node never started (no queue yet) gets
nothing. Its late answer goes nowhere (this command's reply queue is gone); the node's log has it.

Exit status: 0 every expected node answered and none failed; 1 a node is missing, its task raised
(the error is shown) or returned ``{"status": "fail"}``; 2 bad input (nothing sent); 3 broker
unreachable or inventory unusable.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import socket
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (str(REPO_ROOT), str(Path(__file__).resolve().parent)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import fleet as fleet_model  # noqa: E402

EXIT_OK, EXIT_UNHEALTHY, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
DEFAULT_TIMEOUT = 10.0
DEFAULT_EXPIRES = 3600.0
ANSWER_STATUSES = ("ok", "failed", "skipped")
_POLL = 1.0  # seconds per drain, so broker heartbeats go out while waiting


class UsageError(Exception):
    """Bad command line input; nothing was sent."""


class UnavailableError(Exception):
    """The inventory or the broker cannot be used."""


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
) -> Outcome:
    """Send task to every node through broadcast queue and collect answers until all expected or timeout."""
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
                app.send_task(task, args=list(args), kwargs=dict(kwargs), task_id=task_id,
                              queue=broadcast_queue(queue), headers={REPLY_HEADER: reply_queue.name},
                              expires=expires, ignore_result=True, connection=conn)
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
        raise UnavailableError(f"broker {fleet_model.redact(broker_url)}: {fleet_model.redact(str(exc))}") from None
    return Outcome(task=task, task_id=task_id, expected=tuple(expected), answers=tuple(answers.values()),
                   timeout=timeout)


# Presenters.

def outcome_json(outcome: Outcome) -> dict[str, Any]:
    """Machine-readable form of an outcome."""
    hosts = {
        host: {
            answer.node: {key: value for key, value in (
                ("status", "failed" if answer.failed else answer.status), ("hostname", answer.hostname),
                ("result", answer.result), ("error", answer.error), ("traceback", answer.traceback),
                ("runtime", answer.runtime),
                ("received", None if answer.received is None else round(answer.received, 6)),
            ) if value is not None}
            for answer in answers
        }
        for host, answers in outcome.hosts().items()
    }
    return {
        "task": outcome.task, "task_id": outcome.task_id, "ok": outcome.ok, "complete": outcome.complete,
        "timeout": outcome.timeout, "expected": len(outcome.expected),
        "answered": len(outcome.expected) - len(outcome.missing),
        "missing": list(outcome.missing), "failed": list(outcome.failed), "unexpected": list(outcome.unexpected),
        "hosts": hosts,
    }


_INLINE = 100  # longer results are printed indented below their node


def _describe(answer: Answer, outcome: Outcome) -> tuple[str, list[str]]:
    """Label and detail lines of one node's answer."""
    if answer.status == "missing":
        return "MISSING", [f"no answer within {outcome.timeout:g}s"]
    if answer.status == "failed":
        return "FAILED", [answer.error or "failed"]
    label = "FAILED" if answer.failed else answer.status
    note = " (not in the inventory)" if answer.node in outcome.unexpected else ""
    inline = json.dumps(answer.result, sort_keys=True)
    if len(inline) <= _INLINE:
        return label, [inline + note]
    return label, [note.strip(), *json.dumps(answer.result, sort_keys=True, indent=2).splitlines()]


def render_text(outcome: Outcome) -> str:
    """Human-readable form of an outcome: one line per node, grouped by host, then a summary."""
    width = max((len(node) for node in (*outcome.expected, *outcome.unexpected)), default=4)
    lines = [f"{outcome.task} [{outcome.task_id}]"]
    for host, answers in outcome.hosts().items():
        lines.append(host)
        for answer in answers:
            label, (first, *more) = _describe(answer, outcome)
            lines.append(f"  {answer.node:<{width}}  {label:<7}  {first}".rstrip())
            lines += [f"    {line}" for line in more]
    answered = len(outcome.expected) - len(outcome.missing)
    summary = f"{answered}/{len(outcome.expected)} nodes answered"
    if outcome.missing:
        summary += f", {len(outcome.missing)} missing"
    if outcome.failed:
        summary += f", {len(outcome.failed)} failed"
    lines.append(("ok: " if outcome.ok else "NOT OK: ") + summary)
    return "\n".join(lines)


# Command line.

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inventory", required=True, help="Ansible inventory (file or directory)")
    parser.add_argument("--task", required=True, help="maintenance task name (short or full)")
    parser.add_argument("--args", default="", help="JSON object (keyword args) or list (positional args)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for answers")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--expires", type=float, default=DEFAULT_EXPIRES,
                        help="seconds a node that is down may still run the task when it is back")
    parser.add_argument("--task-id", default=None, help="re-send an earlier broadcast: nodes that ran it skip it")
    options = parser.parse_args(argv)
    if options.timeout <= 0 or options.expires <= 0:
        parser.error("--timeout and --expires must be positive")
    if options.task_id is not None and not options.task_id.strip():
        parser.error("--task-id must not be empty")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        from celery_app.app import app
        from celery_app.tasks.maintenance import MAINTENANCE

        task = resolve_task(options.task, MAINTENANCE)
        args, kwargs = parse_task_args(options.args)
        check_arguments(task, args, kwargs)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        fleet = fleet_model.load_fleet(options.inventory)
        if not fleet.node_names:
            raise UnavailableError(f"{options.inventory}: no celery_workers hosts, so no node to broadcast to")
        if not fleet.broker_url:
            raise UnavailableError(f"{options.inventory}: no broker URL (no rabbitmq host or no "
                                   f"{fleet_model.secrets_dir(options.inventory)}/{fleet_model.PASSWORD_FILE}; "
                                   "CELERY_BROKER_URL overrides)")
        outcome = broadcast(app, fleet.broker_url, fleet.broadcast_queues[0], task.name, args, kwargs,
                            expected=fleet.node_names, timeout=options.timeout, expires=options.expires,
                            task_id=options.task_id)
    except (fleet_model.FleetError, UnavailableError) as exc:
        print(f"error: {fleet_model.redact(str(exc))}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if options.format == "json":
        print(json.dumps(outcome_json(outcome), indent=2, sort_keys=True))
    else:
        print(render_text(outcome))
    return EXIT_OK if outcome.ok else EXIT_UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
