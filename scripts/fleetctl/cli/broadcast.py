"""``fleetctl broadcast``: run a maintenance task on every node and show one answer per node."""
from __future__ import annotations

import argparse
import json
from typing import Any

from fleetctl.broadcast import (
    DEFAULT_EXPIRES,
    DEFAULT_TIMEOUT,
    Answer,
    Outcome,
    broadcast,
    check_arguments,
    parse_task_args,
    resolve_task,
)
from fleetctl.cli.common import Output, add_fleet_options, inventory_of, positive
from fleetctl.errors import EXIT_FAILED, EXIT_OK, UnavailableError, UsageError
from fleetctl.inventory import load_fleet

EPILOG = """\
TASK is a maintenance task (celery_app/tasks/maintenance.py: MAINTENANCE), by short or full name.
ARGS is a JSON object (keyword arguments) or list (positional); both are checked against the task's
signature. A bad TASK or ARGS is refused (exit 2) before the inventory is read or anything is sent.

Every node answers on a reply queue of this command's own; it returns as soon as every node the
inventory expects answered, or after --timeout. A node that is down is reported missing now and runs
the task when it is back, within --expires. A node runs a task id once: --task-id of an earlier call
reaches the nodes that missed it without running it twice elsewhere. With --limit the task goes to the
selected nodes' own broadcast queues only.

exit status: 0 every expected node answered and none failed, 1 a node missing or failed, 2 bad input
(nothing sent), 3 broker or inventory unavailable, 130 interrupted"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    summary = "run a maintenance task on every node, one answer per node"
    parser = sub.add_parser("broadcast", help=summary, description=summary[0].upper() + summary[1:] + ".",
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fleet_options(parser)
    parser.add_argument("--task", required=True, help="maintenance task name (short or full)")
    parser.add_argument("--args", default="", help="JSON object (keyword args) or list (positional args)")
    parser.add_argument("--timeout", type=positive, default=DEFAULT_TIMEOUT, metavar="S",
                        help="seconds to wait for answers (default %(default)g)")
    parser.add_argument("--expires", type=positive, default=DEFAULT_EXPIRES, metavar="S",
                        help="seconds a node that is down may still run the task when it is back "
                             "(default %(default)g)")
    parser.add_argument("--task-id", default=None, help="re-send an earlier broadcast: nodes that ran it skip it")
    parser.set_defaults(run=run)


def run(options: argparse.Namespace, out: Output) -> int:
    from celery_app.app import app
    from celery_app.tasks.maintenance import MAINTENANCE

    if options.task_id is not None and not options.task_id.strip():
        raise UsageError("--task-id must not be empty")
    task = resolve_task(options.task, MAINTENANCE)
    args, kwargs = parse_task_args(options.args)
    check_arguments(task, args, kwargs)
    inventory = inventory_of(options)
    fleet = load_fleet(inventory, limit=options.limit)
    if not fleet.node_names:
        raise UnavailableError(f"{inventory}: no celery_workers hosts{' in the limit' if options.limit else ''}, "
                               "so no node to broadcast to")
    outcome = broadcast(app, fleet.require_broker_url(inventory), fleet.broadcast_queues[0], task.name, args, kwargs,
                        expected=fleet.node_names, timeout=options.timeout, expires=options.expires,
                        task_id=options.task_id, targets=fleet.node_names if options.limit else None)
    if options.format == "json":
        out.json(outcome_json(outcome), sort_keys=True)
    else:
        out.line(render_text(outcome))
    return EXIT_OK if outcome.ok else EXIT_FAILED



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


