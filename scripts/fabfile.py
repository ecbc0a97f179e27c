"""Fabric tasks over scripts/health.py: ``.venv/bin/fab -r scripts health|status --inventory PATH [--format json]``."""
from __future__ import annotations

import sys
from pathlib import Path

from fabric import task
from invoke.exceptions import Exit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import health  # noqa: E402

_HELP = {
    "inventory": "Ansible inventory (file or directory); default: the sandbox fleet",
    "format": "text or json",
    "connect-timeout": f"seconds to reach a host over SSH (default {health.DEFAULT_CONNECT_TIMEOUT:g})",
    "ping-timeout": f"seconds to wait for the nodes' answers (default {health.DEFAULT_PING_TIMEOUT:g})",
}


def _run(inventory: str, format: str, connect_timeout: float, ping_timeout: float, *extra: str) -> None:
    code = health.main(["--inventory", inventory, "--format", format, "--connect-timeout", str(connect_timeout),
                        "--ping-timeout", str(ping_timeout), *extra])
    if code:
        raise Exit(code=code)


@task(name="health", help=_HELP, auto_shortflags=False)
def health_(c, inventory=str(health.DEFAULT_INVENTORY), format="text",
            connect_timeout=health.DEFAULT_CONNECT_TIMEOUT, ping_timeout=health.DEFAULT_PING_TIMEOUT):
    """Check every host, unit, node, queue and beat against the inventory (exit 1 when unhealthy)."""
    _run(inventory, format, connect_timeout, ping_timeout)


@task(help=_HELP, auto_shortflags=False)
def status(c, inventory=str(health.DEFAULT_INVENTORY), format="text",
           connect_timeout=health.DEFAULT_CONNECT_TIMEOUT, ping_timeout=health.DEFAULT_PING_TIMEOUT):
    """One row per host: OK / WARN / FAIL / DOWN and why (the health check, summarized)."""
    _run(inventory, format, connect_timeout, ping_timeout, "--summary")
