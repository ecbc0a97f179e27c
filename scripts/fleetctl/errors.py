"""The exit codes every fleetctl verb shares, and the errors that map to them."""
from __future__ import annotations

EXIT_OK = 0  # healthy, done, every node answered
EXIT_FAILED = 1  # unhealthy, stopped at a host, a node missing or failed
EXIT_USAGE = 2  # bad input: nothing was changed or sent
EXIT_UNAVAILABLE = 3  # the broker or the inventory cannot be used
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT)

EXIT_CODES = {
    EXIT_OK: "ok: healthy, done, every node answered",
    EXIT_FAILED: "unhealthy or failed: a FAIL/DOWN row, a host that did not come back, a node missing or failed",
    EXIT_USAGE: "usage error: bad option, task or arguments, inventory path not found (nothing was changed)",
    EXIT_UNAVAILABLE: "unavailable: the broker or the inventory cannot be used (nothing was changed)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C): drained queues were given back first",
}


class FleetctlError(Exception):
    """An error a user can act on: printed as one line, then exit with ``exit_code``."""

    exit_code = EXIT_FAILED


class UsageError(FleetctlError):
    """Bad input: nothing was changed or sent."""

    exit_code = EXIT_USAGE


class UnavailableError(FleetctlError):
    """The broker or the inventory cannot be used: nothing was changed."""

    exit_code = EXIT_UNAVAILABLE


class Interrupted(FleetctlError):
    """The operator pressed Ctrl-C; what was undone is in the message."""

    exit_code = EXIT_INTERRUPTED
