"""``fleetctl health`` and ``fleetctl status``: every host, unit, node, queue, beat and host metric, judged."""
from __future__ import annotations

import argparse

from fleetctl.cli.common import Output, add_fleet_options, inventory_of, positive
from fleetctl.concurrency import Background
from fleetctl.errors import EXIT_FAILED, EXIT_OK, UsageError
from fleetctl.health.model import DEFAULT_CONNECT_TIMEOUT, DEFAULT_PING_TIMEOUT, Thresholds
from fleetctl.health.render import render_text, report_json
from fleetctl.inventory import load_fleet

HEALTH_HELP = """\
Two kinds of checks run at the same time, bounded by --connect-timeout + --ping-timeout however many
hosts are down: one SSH round trip per host runs a small probe (units, heartbeat, load, memory, disk,
worker processes, pid files), and the inventory's nodes are asked ping and active_queues through the
broker (returning as soon as every one answered).

A host is DOWN when SSH cannot reach it, FAIL when a unit its role needs is not active, beat runs where
it should not, the heartbeat is stale, or a metric passes its fail threshold (WARN: its warn threshold).
A node FAILs when it does not answer ping, consumes other queues than its inventory queues plus the
broadcast queues, or runs more than once. Each inventory queue is asked of the broker passively
(messages ready, consumers; no management API): it WARNs or FAILs at --queue-warn/--queue-fail
messages ready, and FAILs when it holds messages and no node consumes it.

exit status: 0 healthy (only OK and WARN), 1 unhealthy (a FAIL or DOWN), 2 usage error,
3 broker or inventory unavailable, 130 interrupted"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    for verb, summary, text in (
        ("health", "check every host, unit, node, queue, beat and host metric against the inventory", HEALTH_HELP),
        ("status", "the health check, one row per host (OK / WARN / FAIL / DOWN and why)", HEALTH_HELP),
    ):
        parser = sub.add_parser(verb, help=summary, description=summary[0].upper() + summary[1:] + ".",
                                epilog=text, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_fleet_options(parser)
        parser.set_defaults(run=run, summary=verb == "status")
        add_check_options(parser)


def add_check_options(parser: argparse.ArgumentParser) -> None:
    defaults = Thresholds()
    parser.add_argument("--connect-timeout", type=positive, default=DEFAULT_CONNECT_TIMEOUT, metavar="S",
                        help="seconds to reach a host over SSH, and the broker (default %(default)g)")
    parser.add_argument("--ping-timeout", type=positive, default=DEFAULT_PING_TIMEOUT, metavar="S",
                        help="seconds to wait for the nodes' answers (default %(default)g)")
    limits = parser.add_argument_group("thresholds (WARN at >= warn, FAIL at >= fail)")
    for name, unit in (("load", "5-minute load per CPU"), ("memory", "memory used, %%"), ("disk", "disk used, %%")):
        for level, default in zip(("warn", "fail"), getattr(defaults, name)):
            limits.add_argument(f"--{name}-{level}", dest=f"{name}_{level}", type=positive, default=default,
                                metavar="N", help=f"{unit} (default %(default)g)")
    for level, default in zip(("warn", "fail"), defaults.queue):
        limits.add_argument(f"--queue-{level}", dest=f"queue_{level}", type=positive, default=default, metavar="N",
                            help="messages ready on an inventory queue (default %(default)g)")
    limits.add_argument("--heartbeat-periods", type=positive, default=defaults.heartbeat_periods, metavar="N",
                        help="a heartbeat older than this many beat periods fails (default %(default)g)")


def thresholds_from(options: argparse.Namespace) -> Thresholds:
    """The Thresholds the command line asks for; UsageError when a warn level exceeds its fail level."""
    limits = {name: (getattr(options, f"{name}_warn"), getattr(options, f"{name}_fail"))
              for name in ("load", "memory", "disk", "queue")}
    for name, (warn, fail) in limits.items():
        if warn > fail:
            raise UsageError(f"--{name}-warn must not exceed --{name}-fail")
    return Thresholds(**limits, heartbeat_periods=options.heartbeat_periods)


def run(options: argparse.Namespace, out: Output) -> int:
    from fleetctl.health.gather import check

    thresholds = thresholds_from(options)
    inventory = inventory_of(options)
    # Reading the inventory (cached; ansible-inventory, a second or so, when an input changed) overlaps
    # importing Fabric. check() imports Celery once the SSH probes are on their way.
    loading = Background(lambda: load_fleet(inventory, limit=options.limit))
    import fabric  # noqa: F401

    fleet = loading.result()
    report = check(fleet, connect_timeout=options.connect_timeout, ping_timeout=options.ping_timeout,
                   thresholds=thresholds, inventory=inventory)
    if options.summary:
        report = report.summarized()
    if options.format == "json":
        out.json(report_json(report))
    else:
        out.line(render_text(report, out.status))
    return EXIT_OK if report.healthy else EXIT_FAILED
