"""``fleetctl release`` and ``fleetctl rollback``: the operator's app, host by host, with a gate on each host."""
from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from fleetctl.cli.common import Output, add_fleet_options, inventory_of, positive
from fleetctl.errors import EXIT_FAILED, EXIT_OK
from fleetctl.inventory import load_fleet
from fleetctl.release import FAIL, OK, PLANNED, Event, Outcome, Timeouts, load_app_config, roll_out
from fleetctl.restart import DEFAULT_CONNECT_TIMEOUT, DEFAULT_DRAIN_TIMEOUT, DEFAULT_VERIFY_TIMEOUT

STEPS = """\
Build (controller, once per release and Python version of the hosts): the app's wheel, the fleet's
own package, and a wheelhouse of every pinned dependency for the hosts' Python and platform, in
.cache/releases/<inventory dir>/<id>/; where the controller runs the hosts' Python, celery_worker_app
is imported from it first. Then host by host (group celery_workers, inventory order; the first is the
canary): the wheelhouse is installed with pip --no-index into /opt/celery/releases/<id>/venv,
/opt/celery/current switches to it, the nodes are drained and restarted (as `fleetctl restart`), and
the gate runs: every node answers ping with its queues, and celery_worker_app_smoke_task succeeds on
the host. A host that fails is switched back to its release, restarted and verified; the rollout
stops there and later hosts are left alone. Hosts already on the release are left alone."""

EXITS = """\
exit status: 0 every worker host runs the release and passed its gate (or already ran it), 1 stopped
at a host that failed (named), 2 bad input or a release that does not build or import (nothing
changed), 3 broker or inventory unavailable, 130 interrupted"""


_TIMEOUTS = (
    ("--drain-timeout", DEFAULT_DRAIN_TIMEOUT, "seconds to wait for a host's running tasks before its restart"),
    ("--verify-timeout", DEFAULT_VERIFY_TIMEOUT, "seconds for a restarted host's nodes to answer with their queues"),
    ("--connect-timeout", DEFAULT_CONNECT_TIMEOUT, "seconds to reach a host over SSH, and the broker"),
)


def _common(parser: argparse.ArgumentParser) -> None:
    add_fleet_options(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="build, then say what each host would do; change nothing")
    for flag, default, words in _TIMEOUTS:
        parser.add_argument(flag, type=positive, default=default, metavar="S", help=f"{words} (default %(default)g)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    summary = "build the app's release and roll it out host by host (canary first), with a gate on each"
    parser = sub.add_parser("release", help=summary, description=summary[0].upper() + summary[1:] + ".",
                            epilog=f"{STEPS}\n\n{EXITS}", formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(parser)
    parser.add_argument("--version", dest="release", default=None, metavar="ID",
                        help="release id ([A-Za-z0-9._-]; default <dist>-<version>-<content digest>)")
    parser.set_defaults(run=run, rollback=False)
    summary = "roll the previous (or the named) release out again, host by host, as a release"
    parser = sub.add_parser("rollback", help=summary, description=summary[0].upper() + summary[1:] + ".",
                            epilog=f"The release rolled out is the canary's previous one (or --to), installed on "
                                   f"the hosts or built on the controller.\n\n{STEPS}\n\n{EXITS}",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(parser)
    parser.add_argument("--to", dest="release", default=None, metavar="ID", help="the release to go back to")
    parser.set_defaults(run=run, rollback=True)


def event_text(event: Event) -> str | None:
    """One progress line for an event (None: nothing to say)."""
    d, host = event.data, event.host
    if event.kind == "restart":  # the restart's own steps: only its restart and verify are worth a line
        step = d.get("step")
        return (f"  {host}: {step} {'ok' if d.get('ok') else 'FAILED'} in {d.get('seconds', 0):.1f} s"
                if step in ("restart", "verify") else None)
    words = _EVENT_WORDS.get(event.kind)
    if words is None:
        return None
    good, bad = words
    return (good if d.get("ok", True) else bad)(host, d)


_EVENT_WORDS = {
    "build": (lambda h, d: f"release {d['release']} for Python {d['python']}: " + (
        "already built" if d.get("cached") else f"built in {d.get('seconds', 0):.1f} s ({d.get('pins')} wheels)"),
        None),
    "check": (lambda h, d: f"release {d['release']}: importing {d['app']} on the controller", None),
    "host": (lambda h, d: (f"{h}: would go from {d['before'] or 'no release'} to {d['after']}" if d.get("dry_run")
                           else f"{h}: {d['before'] or 'no release'} -> {d['after']}"), None),
    "install": (lambda h, d: f"  {h}: installed in {d['seconds']:.1f} s",
                lambda h, d: f"  {h}: install FAILED: {d['detail']}"),
    "switch": (lambda h, d: f"  {h}: current -> {d['release']}", lambda h, d: f"  {h}: switch FAILED: {d['detail']}"),
    "gate": (lambda h, d: f"  {h}: gate passed", lambda h, d: f"  {h}: gate FAILED: {d['detail']}"),
    "restore": (lambda h, d: f"  {h}: back on {d['release']}, healthy",
                lambda h, d: f"  {h}: back on {d['release'] or 'nothing'} NOT healthy: {d['detail']}"),
    "prune": (lambda h, d: f"  {h}: removed release(s) {', '.join(d['releases'])}",
              lambda h, d: f"  {h}: removing release(s) {', '.join(d['releases'])} FAILED"),
}


def render_text(outcome: Outcome) -> str:
    width = max([len("HOST"), *(len(host.host) for host in outcome.hosts)])
    lines = [f"{'HOST':<{width}}  STATUS     BEFORE -> AFTER"]
    for host in outcome.hosts:
        detail = f"  {host.code}: {host.detail}" if host.code else ""
        lines.append(f"{host.host:<{width}}  {host.status:<9}  {host.before or '-'} -> {host.after or '-'}{detail}")
    verb = outcome.action
    if not outcome.ok:
        failed = outcome.stopped_at[0]
        cause = next(h for h in outcome.hosts if h.status == FAIL)
        lines.append(f"STOPPED at {failed}: {verb} {outcome.release} failed there ({cause.code}); "
                     f"later hosts left alone, {outcome.elapsed:.1f} s")
    elif outcome.dry_run:
        lines.append(f"DRY RUN: {verb} {outcome.release} would change {len(outcome.changed)} host(s): "
                     f"{', '.join(outcome.changed) or 'none'}")
    else:
        done = sum(host.status == OK for host in outcome.hosts)
        lines.append(f"RELEASED {outcome.release}: {done} host(s) switched, "
                     f"{len(outcome.hosts) - done} already on it, in {outcome.elapsed:.1f} s")
    return "\n".join(lines)


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    return {"release": outcome.release, "action": outcome.action, "ok": outcome.ok, "dry_run": outcome.dry_run,
            "changed": list(outcome.changed), "stopped_at": list(outcome.stopped_at),
            "elapsed": round(outcome.elapsed, 3),
            "builds": [{"release": b.release, "python": b.python, "pins": list(b.pins), "checked": b.checked,
                        "seconds": round(b.seconds, 3)} for b in outcome.builds],
            "hosts": [asdict(host) for host in outcome.hosts]}


def run(options: argparse.Namespace, out: Output) -> int:
    inventory = inventory_of(options)
    fleet = load_fleet(inventory, limit=options.limit)
    config = load_app_config(fleet, inventory)

    def on_event(event: Event) -> None:
        if options.format == "text":
            text = event_text(event)
            if text:
                out.progress(text)

    timeouts = Timeouts(connect=options.connect_timeout, drain=options.drain_timeout, verify=options.verify_timeout)
    outcome = roll_out(fleet, config, inventory=inventory, version=options.release, rollback=options.rollback,
                       dry_run=options.dry_run, timeouts=timeouts, on_event=on_event)
    if options.format == "json":
        out.json(outcome_json(outcome))
    else:
        out.line(render_text(outcome))
    return EXIT_OK if outcome.ok else EXIT_FAILED


__all__ = ["PLANNED", "add_parser", "run"]
