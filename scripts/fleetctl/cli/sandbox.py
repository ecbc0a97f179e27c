"""``fleetctl sandbox up|down|status``: the local fleet of systemd-nspawn hosts."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from fleetctl import sandbox
from fleetctl.cli.common import Output
from fleetctl.errors import EXIT_OK, UsageError
from fleetctl.paths import REPO_ROOT, default_inventory

EPILOG = """\
One systemd-nspawn container per inventory host, booting a real systemd, sshd and python3, on a
private bridge with no route out (packages through a proxy on the bridge address). `up` is
idempotent: hosts that are up are left alone, dead ones are replaced by blank ones (a new disk).
`poweroff HOST` is a power cut (PID 1 killed, no shutdown, the disk kept); `poweron HOST` boots the
host again with that disk, as a real host comes back after a power loss. All but status need root.

exit status: 0 done, 2 bad input (inventory, host names, not root), 130 interrupted"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    summary = "the local sandbox fleet: boot, remove or list its hosts"
    parser = sub.add_parser("sandbox", help=summary, description=summary[0].upper() + summary[1:] + ".",
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="sandbox_command", required=True,
                                  metavar="{up,down,status,poweroff,poweron}")
    p_up = verbs.add_parser("up", help="boot one host per inventory host (idempotent)")
    p_up.add_argument("inventory", nargs="?", default=None, help="inventory (default: $ANSIBLE_INVENTORY, else "
                                                                  "the sandbox inventory)")
    p_up.add_argument("--suite", default=os.environ.get("SANDBOX_SUITE", "bookworm"), choices=sandbox.SUITES,
                      help="Debian release of the hosts (default: $SANDBOX_SUITE, else bookworm)")
    p_up.set_defaults(run=run_up)
    p_down = verbs.add_parser("down", help="stop and remove an inventory's hosts, bridge and proxy")
    p_down.add_argument("inventory", nargs="?", default=None, help="inventory (default as for up)")
    p_down.add_argument("--all", action="store_true", help="every sandbox fleet")
    p_down.set_defaults(run=run_down)
    p_status = verbs.add_parser("status", help="list sandbox hosts, addresses and state")
    p_status.add_argument("--json", action="store_true", help="as JSON")
    p_status.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    p_status.set_defaults(run=run_status)
    p_off = verbs.add_parser("poweroff", help="cut a host's power: it stops at once, no clean shutdown; its disk "
                                              "stays")
    p_on = verbs.add_parser("poweron", help="boot a powered-off host with the disk it had (`up` boots it blank)")
    for power, run in ((p_off, run_poweroff), (p_on, run_poweron)):
        power.add_argument("host", help="inventory name of the host")
        power.add_argument("-i", "--inventory", default=None, metavar="PATH",
                           help="inventory of its fleet (default: $ANSIBLE_INVENTORY, else the sandbox inventory)")
        power.set_defaults(run=run)


def _need_root() -> None:
    if os.geteuid() != 0:
        raise UsageError("the sandbox needs root (network bridge, containers)")


def _relative(path: str) -> str:
    return os.path.relpath(path, REPO_ROOT)


def _print_status(rows: list[dict], out: Output) -> None:
    if not rows:
        out.line("No sandbox hosts.")
        return
    width = max(len(r["host"]) for r in rows)
    for inventory in dict.fromkeys(r["inventory"] for r in rows):
        out.line(f"{inventory}:")
        for r in (r for r in rows if r["inventory"] == inventory):
            out.line(f"  {r['host']:<{width}}  {r['address']:<14} {r['state']}")


def run_up(options: argparse.Namespace, out: Output) -> int:
    _need_root()
    started = time.monotonic()
    fleet = sandbox.up(Path(options.inventory or default_inventory()), options.suite, log=out.progress)
    out.line(f"Sandbox up: {len(fleet.hosts)} host(s) for {_relative(fleet.inventory)} "
             f"in {time.monotonic() - started:.1f} s")
    _print_status([r for r in sandbox.status() if r["inventory"] == _relative(fleet.inventory)], out)
    return EXIT_OK


def run_down(options: argparse.Namespace, out: Output) -> int:
    _need_root()
    removed = sandbox.down(Path(options.inventory or default_inventory()), everything=options.all)
    out.line(f"Sandbox down: {', '.join(_relative(r) for r in removed) or 'nothing was up'}")
    return EXIT_OK


def run_status(options: argparse.Namespace, out: Output) -> int:
    rows = sandbox.status()
    if options.json or options.format == "json":
        out.json(rows)
    else:
        _print_status(rows, out)
    return EXIT_OK


def run_poweroff(options: argparse.Namespace, out: Output) -> int:
    _need_root()
    inventory = Path(options.inventory or default_inventory())
    was_on = sandbox.poweroff(inventory, options.host)
    out.line(f"{options.host}: powered off (no shutdown; its disk is kept)" if was_on
             else f"{options.host}: was already off")
    return EXIT_OK


def run_poweron(options: argparse.Namespace, out: Output) -> int:
    _need_root()
    started = time.monotonic()
    booted = sandbox.poweron(Path(options.inventory or default_inventory()), options.host, log=out.progress)
    out.line(f"{options.host}: powered on with its disk, SSH up in {time.monotonic() - started:.1f} s" if booted
             else f"{options.host}: was already on")
    return EXIT_OK
