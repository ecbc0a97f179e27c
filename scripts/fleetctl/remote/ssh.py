"""SSH to fleet hosts with Fabric: one connection per host, explicit timeouts, outcomes kept per host."""
from __future__ import annotations

import functools
import logging
import math
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fleetctl.concurrency import Background
from fleetctl.inventory import Host


@dataclass(frozen=True)
class RunResult:
    """One host's answer to a command: exit code and output, or why there is none."""

    host: str
    exited: int | None = None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None  # no answer: SSH failed, or the command timed out
    down: bool = False  # SSH did not get in (the host is unreachable)
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and self.exited == 0


def describe_ssh_error(exc: BaseException, connect_timeout: float) -> str:
    """One line on why an SSH connection failed."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"no SSH connection within {connect_timeout:g} s"
    errors = getattr(exc, "errors", None)  # paramiko NoValidConnectionsError: one error per address tried
    if isinstance(errors, dict) and errors:
        (address, port, *_), error = next(iter(errors.items()))
        return f"cannot connect to {address} port {port}: {getattr(error, 'strerror', None) or error}"
    text = str(exc).strip() or type(exc).__name__
    if text == "No existing session":  # paramiko, when the transport died before login (e.g. no banner)
        return f"no SSH session (no banner or login within {connect_timeout:g} s)"
    return text.splitlines()[0][:200]


@functools.cache
def _recording_connection() -> type:
    """fabric.Connection that keeps the outcome of its last run (so a deadline loses no finished host)."""
    from fabric import Connection

    class RecordingConnection(Connection):
        outcome: Any = None

        def run(self, command, **kwargs):
            try:
                result = super().run(command, **kwargs)
            except BaseException as exc:
                self.outcome = exc
                raise
            self.outcome = result
            return result

    return RecordingConnection


def connect_kwargs(host: Host, connect_timeout: float) -> dict[str, Any]:
    """Paramiko connect arguments for host: every phase bounded, the inventory's key when it names one."""
    kwargs: dict[str, Any] = {
        "banner_timeout": connect_timeout, "auth_timeout": connect_timeout, "channel_timeout": connect_timeout,
    }
    if host.key_file:
        kwargs.update(key_filename=os.path.expanduser(host.key_file), look_for_keys=False, allow_agent=False)
    return kwargs


def connection(host: Host, connect_timeout: float, config: Any = None) -> Any:
    """A Fabric connection to host as the inventory describes it (user, port, key), timeouts explicit."""
    from fabric import Config

    return _recording_connection()(host.address, user=host.user, port=host.port, config=config or Config(),
                                   connect_timeout=max(1, math.ceil(connect_timeout)),
                                   connect_kwargs=connect_kwargs(host, connect_timeout))


def ssh_connections(hosts: Sequence[Host], connect_timeout: float) -> list[Any]:
    """One Fabric connection per host, in order, sharing one config."""
    from fabric import Config

    config = Config()
    return [connection(host, connect_timeout, config) for host in hosts]


def _result_from(name: str, outcome: Any, connected: bool, connect_timeout: float, bound: float) -> RunResult:
    if outcome is None:  # still running at the deadline
        if connected:
            return RunResult(name, error=f"did not finish within {bound:g} s", timed_out=True)
        return RunResult(name, error=f"no SSH session within {bound:g} s", down=True)
    if isinstance(outcome, BaseException):
        from invoke.exceptions import CommandTimedOut

        if isinstance(outcome, CommandTimedOut):
            return RunResult(name, error=f"did not finish within {outcome.timeout:g} s", timed_out=True)
        return RunResult(name, error=describe_ssh_error(outcome, connect_timeout), down=True)
    return RunResult(name, exited=outcome.exited, stdout=outcome.stdout, stderr=outcome.stderr)


def run_on_hosts(hosts: Sequence[Host], command: str, *, connect_timeout: float, timeout: float,
                 deadline: float | None = None) -> dict[str, RunResult]:
    """Run command on every host at once (Fabric ThreadingGroup); host name -> RunResult.

    ``timeout`` bounds the command on each host; ``deadline`` (monotonic) bounds the whole call: hosts
    not done by then are reported as such, and the call returns anyway.
    """
    from fabric import ThreadingGroup
    from fabric.exceptions import GroupException

    # Paramiko logs transport errors (no banner...) from its own threads; the results say it instead.
    logging.getLogger("paramiko").addHandler(logging.NullHandler())
    connections = ssh_connections(hosts, connect_timeout)
    if not connections:
        return {}
    group = ThreadingGroup.from_connections(connections)
    started = time.monotonic()

    def run() -> None:
        try:
            group.run(command, hide=True, warn=True, in_stream=False, timeout=max(1, math.ceil(timeout)))
        except GroupException:
            pass  # each connection recorded its own outcome
        finally:
            group.close()

    Background(run).result(deadline)
    bound = (deadline - started) if deadline is not None else timeout
    return {host.name: _result_from(host.name, cxn.outcome, cxn.is_connected, connect_timeout, bound)
            for host, cxn in zip(hosts, connections)}
