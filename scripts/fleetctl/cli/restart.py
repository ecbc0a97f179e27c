"""``fleetctl restart``: rolling restart of the workers, host by host, with progress as it goes."""
from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from fleetctl.cli.common import Output, add_fleet_options, inventory_of, positive, whole
from fleetctl.errors import EXIT_FAILED, EXIT_OK
from fleetctl.health.render import describe, plain
from fleetctl.inventory import load_fleet
from fleetctl.restart import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_RESTART_TIMEOUT,
    DEFAULT_SERIAL,
    DEFAULT_VERIFY_TIMEOUT,
    OK,
    SKIPPED,
    Event,
    HostRestart,
    Outcome,
    rolling_restart,
)

EPILOG = """\
For each batch of --serial worker hosts (group celery_workers, inventory order):
  1. drain: every node of the batch stops consuming (cancel_consumer of each queue it consumes);
  2. wait until its nodes hold no active or reserved task, at most --drain-timeout seconds (the warm
     shutdown of the restart still lets running tasks finish);
  3. systemctl restart celery on the batch's hosts, at most --restart-timeout seconds;
  4. verify, at most --verify-timeout seconds: every node answers ping with its queues, celery.service
     active, each node running once.
The first batch that does not come back healthy stops the run; later hosts are left alone. A failed
restart, or Ctrl-C, gives the batch's drained queues back (add_consumer) before the command ends.

Progress: text prints each host's drain, restart and verify as they happen; --format json-lines prints
one JSON object per event (batch, draining, drain, restart, verify, resume, interrupted) and a final
{"event": "result", ...}; --format json prints the result only.

exit status: 0 every worker host restarted and healthy, 1 stopped at a host that did not come back
healthy, 2 usage error, 3 broker or inventory unavailable (nothing restarted), 130 interrupted"""

_EXTRA = {
    "restart_timed_out": lambda p: p["detail"],
    "ssh_failed": lambda p: p["detail"],
    "restart_failed": lambda p: p["detail"],
    "broker_failed": lambda p: p["detail"],
    "queues_given_back": lambda p: (f"drained queues given back to {', '.join(p['nodes'])}" if p["nodes"]
                                    else "drained queues given back to no node (none answered)"),
    "not_drained": lambda p: f"not drained (no answer): {', '.join(p['nodes'])}",
    "tasks_left": lambda p: (f"{p['tasks']} task(s) still running after the {p['drain_timeout']:g} s drain: "
                             "left to the warm shutdown"),
    "not_reached": lambda p: "not restarted: an earlier host did not come back healthy",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    summary = "rolling restart of the workers: drain, restart, verify, host by host"
    parser = sub.add_parser("restart", help=summary, description=summary[0].upper() + summary[1:] + ".",
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fleet_options(parser, formats=("text", "json", "json-lines"))
    parser.add_argument("--serial", type=whole, default=DEFAULT_SERIAL, metavar="N",
                        help="hosts restarted at a time (default %(default)s)")
    parser.add_argument("--drain-timeout", type=positive, default=DEFAULT_DRAIN_TIMEOUT, metavar="S",
                        help="seconds to wait for a host's running and reserved tasks (default %(default)g)")
    parser.add_argument("--restart-timeout", type=positive, default=DEFAULT_RESTART_TIMEOUT, metavar="S",
                        help="seconds `systemctl restart celery` may take on a host (default %(default)g)")
    parser.add_argument("--verify-timeout", type=positive, default=DEFAULT_VERIFY_TIMEOUT, metavar="S",
                        help="seconds for a restarted host's nodes to answer with their queues (default %(default)g)")
    parser.add_argument("--connect-timeout", type=positive, default=DEFAULT_CONNECT_TIMEOUT, metavar="S",
                        help="seconds to reach a host over SSH, and the broker (default %(default)g)")
    parser.set_defaults(run=run)


def describe_finding(finding: Any) -> str:
    """A restart finding in words (node findings prefixed with their node)."""
    words = _EXTRA[finding.code](finding.params) if finding.code in _EXTRA else describe(finding)
    node = finding.params.get("node")
    return f"{node}: {words}" if node else words


def host_reasons(host: HostRestart) -> list[str]:
    return [describe_finding(f) for f in host.findings]


def event_text(event: Event) -> str | None:
    """One progress line for an event (None: nothing to say)."""
    d = event.data
    if event.kind == "batch":
        return f"batch {event.batch}: {', '.join(d['hosts'])}"
    if event.kind == "draining":
        return f"  {event.host}: draining ({d['queues_cancelled']} queue(s) cancelled), waiting for its tasks"
    if event.kind == "drain":
        left = f", {d['tasks_left']} task(s) left to the warm shutdown" if d["tasks_left"] else ""
        return f"  {event.host}: drained in {d['seconds']:.1f} s{left}" + (f" ({d['error']})" if d["error"] else "")
    if event.kind == "restart":
        if d["ok"]:
            return f"  {event.host}: restarted in {d['seconds']:.1f} s"
        return f"  {event.host}: restart FAILED: {d['detail']}"
    if event.kind == "verify":
        return (f"  {event.host}: verified in {d['seconds']:.1f} s" if d["ok"]
                else f"  {event.host}: NOT healthy ({', '.join(d['codes']) or 'restart failed'})")
    if event.kind == "resume":
        return f"  drained queues given back to {', '.join(d['nodes']) or 'no node'}"
    if event.kind == "interrupted":
        return f"interrupted: drained queues given back to {', '.join(d['nodes']) or 'no node'}"
    return None


def event_json(event: Event) -> dict[str, Any]:
    return {"event": event.kind, "batch": event.batch, **({"host": event.host} if event.host else {}),
            **plain(dict(event.data))}


def render_text(outcome: Outcome) -> str:
    """One line per host (drain, restart and verify times, then why when not OK), then a verdict line."""
    width = max([len("HOST"), *(len(host.host) for host in outcome.hosts)])
    lines = [f"{'HOST':<{width}}  STATUS   DRAIN    RESTART  VERIFY   DETAIL"]
    for host in outcome.hosts:
        if host.status == SKIPPED:
            times = f"{'-':<7}  {'-':<7}  {'-':<7}"
        else:
            times = f"{host.drain_seconds:>5.1f} s  {host.restart_seconds:>5.1f} s  {host.verify_seconds:>5.1f} s"
        detail = "; ".join(host_reasons(host)) or f"{len(host.nodes)} node(s) back: {', '.join(host.nodes)}"
        lines.append(f"{host.host:<{width}}  {host.status:<7}  {times}  {detail}".rstrip())
    restarted = sum(host.status == OK for host in outcome.hosts)
    if outcome.ok:
        lines.append(f"RESTARTED: {restarted} host(s), {outcome.serial} at a time, in {outcome.elapsed:.1f} s")
    else:
        lines.append(f"STOPPED at {', '.join(outcome.stopped_at)}: {restarted} of {len(outcome.hosts)} host(s) "
                     f"restarted and healthy, {outcome.elapsed:.1f} s")
    return "\n".join(lines)


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    """The outcome as JSON-ready data (reasons in words, codes and findings for machines)."""
    hosts = []
    for host in outcome.hosts:
        data = {key: value for key, value in asdict(host).items() if key != "findings"}
        data.update(nodes=list(host.nodes), reasons=host_reasons(host), codes=[f.code for f in host.findings],
                    findings=plain(host.findings),
                    **{key: round(getattr(host, key), 3) for key in ("drain_seconds", "restart_seconds",
                                                                     "verify_seconds")})
        hosts.append(data)
    return {"inventory": outcome.inventory, "serial": outcome.serial, "ok": outcome.ok,
            "stopped_at": list(outcome.stopped_at), "elapsed": round(outcome.elapsed, 3), "hosts": hosts}


def run(options: argparse.Namespace, out: Output) -> int:
    inventory = inventory_of(options)
    fleet = load_fleet(inventory, limit=options.limit)

    def on_event(event: Event) -> None:
        if options.format == "json-lines":
            out.event(event_json(event))
        elif options.format == "text":
            text = event_text(event)
            if text:
                out.progress(text)

    outcome = rolling_restart(fleet, serial=options.serial, drain_timeout=options.drain_timeout,
                              restart_timeout=options.restart_timeout, verify_timeout=options.verify_timeout,
                              connect_timeout=options.connect_timeout, inventory=inventory, on_event=on_event)
    if options.format == "json-lines":
        out.event({"event": "result", **outcome_json(outcome)})
    elif options.format == "json":
        out.json(outcome_json(outcome))
    else:
        out.line(render_text(outcome))
    return EXIT_OK if outcome.ok else EXIT_FAILED
