"""Fabric tasks over the fleetctl library: ``.venv/bin/fab -r scripts health|status [--inventory PATH]``."""
from __future__ import annotations

from fabric import task
from invoke.exceptions import Exit

from fleetctl.cli.common import Output
from fleetctl.errors import EXIT_FAILED, EXIT_OK, FleetctlError
from fleetctl.health.gather import check
from fleetctl.health.model import DEFAULT_CONNECT_TIMEOUT, DEFAULT_PING_TIMEOUT
from fleetctl.health.render import render_text, report_json
from fleetctl.inventory import load_fleet, redact
from fleetctl.paths import default_inventory

_HELP = {
    "inventory": "Ansible inventory (file or directory); default: $ANSIBLE_INVENTORY, else the sandbox fleet",
    "limit": "only these hosts (an Ansible host pattern)",
    "format": "text or json",
    "connect-timeout": f"seconds to reach a host over SSH (default {DEFAULT_CONNECT_TIMEOUT:g})",
    "ping-timeout": f"seconds to wait for the nodes' answers (default {DEFAULT_PING_TIMEOUT:g})",
}


def _health(inventory: str, limit: str, format: str, connect_timeout: float, ping_timeout: float,
            summary: bool) -> None:
    out = Output()
    inventory = inventory or default_inventory()
    try:
        report = check(load_fleet(inventory, limit=limit or None), connect_timeout=float(connect_timeout),
                       ping_timeout=float(ping_timeout), inventory=inventory)
    except FleetctlError as exc:
        out.error(redact(str(exc)))
        raise Exit(code=exc.exit_code) from None
    report = report.summarized() if summary else report
    if format == "json":
        out.json(report_json(report))
    else:
        out.line(render_text(report, out.status))
    code = EXIT_OK if report.healthy else EXIT_FAILED
    if code:
        raise Exit(code=code)


@task(name="health", help=_HELP, auto_shortflags=False)
def health_(c, inventory="", limit="", format="text", connect_timeout=DEFAULT_CONNECT_TIMEOUT,
            ping_timeout=DEFAULT_PING_TIMEOUT):
    """Check every host, unit, node, queue and beat against the inventory (exit 1 when unhealthy)."""
    _health(inventory, limit, format, connect_timeout, ping_timeout, summary=False)


@task(help=_HELP, auto_shortflags=False)
def status(c, inventory="", limit="", format="text", connect_timeout=DEFAULT_CONNECT_TIMEOUT,
           ping_timeout=DEFAULT_PING_TIMEOUT):
    """One row per host: OK / WARN / FAIL / DOWN and why (the health check, summarized)."""
    _health(inventory, limit, format, connect_timeout, ping_timeout, summary=True)
