"""``fleetctl broker restart``: rolling restart of the broker nodes, one at a time, with progress as it goes."""
from __future__ import annotations

import argparse
from dataclasses import asdict

from fleetctl import broker
from fleetctl.cli.common import Output, inventory_of, positive
from fleetctl.errors import EXIT_FAILED, EXIT_OK, UsageError
from fleetctl.inventory import load_fleet

EPILOG = """\
Every host of group rabbitmq, in inventory order, one at a time:
  1. quorum: `rabbitmq-upgrade await_online_quorum_plus_one`, every quorum queue keeps a majority
     online without this node;
  2. drain: `rabbitmq-upgrade drain` (maintenance mode: its clients reconnect to the other nodes, its
     queue leaders move away);
  3. restart: `systemctl restart rabbitmq-server`, then `rabbitmqctl await_startup`;
  4. revive: `rabbitmq-upgrade revive` (maintenance mode outlives a restart);
  5. rejoin: every node runs in the cluster again (cluster_status on every broker host).
One broker: restart and startup only. Nothing starts while the cluster is degraded (a node down or
not answering, a node missing from another's view, a partition, an alarm): the command says which.
The first node that fails a step stops the run; later nodes are left alone. Each step is bounded
by --step-timeout seconds. Commands run through sudo -n where the SSH user is not root.

exit status: 0 every node restarted and the cluster whole, 1 refused (degraded) or stopped at a node,
2 usage error, 3 inventory unavailable, 130 interrupted"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    summary = "the broker nodes: rolling restart, one node at a time"
    parser = sub.add_parser("broker", help=summary, description=summary[0].upper() + summary[1:] + ".",
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="broker_command", required=True, metavar="{restart}")
    restart = verbs.add_parser("restart", help="rolling restart of the broker nodes (quorum, drain, restart, "
                                               "revive, rejoin)", epilog=EPILOG,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    restart.add_argument("-i", "--inventory", default=None, metavar="PATH",
                         help="Ansible inventory, file or directory (default: $ANSIBLE_INVENTORY, else the sandbox "
                              "inventory)")
    restart.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    restart.add_argument("--step-timeout", type=positive, default=broker.DEFAULT_STEP_TIMEOUT, metavar="S",
                         help="seconds one step of one node may take (default %(default)g)")
    restart.add_argument("--connect-timeout", type=positive, default=broker.DEFAULT_CONNECT_TIMEOUT, metavar="S",
                         help="seconds to reach a host over SSH (default %(default)g)")
    restart.set_defaults(run=run_restart)


def event_text(event: broker.Event) -> str | None:
    """One progress line for an event (None: nothing to say)."""
    d = event.data
    if event.kind == "check":
        return "cluster degraded, nothing restarted:" if d["problems"] else "cluster whole: every node running"
    if event.kind == "node":
        return f"{event.host} ({d['number']}/{d['of']}):"
    if event.kind == "step":
        if d["ok"]:
            return f"  {d['step']}: done in {d['seconds']:.1f} s"
        return f"  {d['step']}: FAILED after {d['seconds']:.1f} s: {d['detail']}"
    return None


def run_restart(options: argparse.Namespace, out: Output) -> int:
    fleet = load_fleet(inventory_of(options))
    if not fleet.broker_hosts:
        raise UsageError(f"{inventory_of(options)}: no host in group rabbitmq")
    text = options.format == "text"

    def emit(event: broker.Event) -> None:
        line = event_text(event) if text else None
        if line:
            out.line(line)

    outcome = broker.rolling_restart(fleet, connect_timeout=options.connect_timeout,
                                     step_timeout=options.step_timeout, emit=emit)
    if not text:
        out.json({"ok": outcome.ok, "refused": list(outcome.refused), "elapsed": outcome.elapsed,
                  "nodes": [asdict(node) for node in outcome.nodes]})
    else:
        for problem in outcome.refused:
            out.line(f"  {problem}")
        for node in outcome.nodes:
            if node.status == broker.SKIPPED:
                out.line(f"{node.host}: not restarted (an earlier node failed)")
        if outcome.refused:
            out.line("Broker restart refused: make the cluster whole first.")
        elif outcome.ok:
            out.line(f"Broker restart done: {len(outcome.nodes)} node(s) in {outcome.elapsed:.1f} s, cluster whole.")
        else:
            failed = next(node for node in outcome.nodes if node.status == broker.FAIL)
            out.line(f"Broker restart stopped at {failed.host}: {failed.reason}")
    return EXIT_OK if outcome.ok else EXIT_FAILED
