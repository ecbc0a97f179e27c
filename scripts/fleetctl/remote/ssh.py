"""SSH to fleet hosts with Fabric: one connection per host, explicit timeouts, outcomes kept per host."""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import shlex
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
    from paramiko.ssh_exception import BadHostKeyException

    if isinstance(exc, BadHostKeyException):
        return (f"host key of {exc.hostname} does not match its known_hosts entry (got {exc.key.get_name()} "
                f"{exc.key.get_fingerprint().hex()}): refused, as ssh would (possible spoofing, or a reinstalled host)")
    if isinstance(exc, UnknownHostKey):
        return str(exc)
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


class UnknownHostKey(Exception):
    """The host offered a key that no known_hosts file knows (refused, as ssh would with checking on)."""


@dataclass(frozen=True)
class SshOptions:
    """What a host's ansible_ssh_common_args/extra_args say to the tools (the rest is ssh's business)."""

    known_hosts: tuple[str, ...] = ()  # UserKnownHostsFile (empty: ~/.ssh/known_hosts)
    strict: str = "ask"  # StrictHostKeyChecking: yes, ask (unknown refused in batch use), accept-new, no
    proxy_jump: str | None = None  # ProxyJump / -J: [user@]host[:port]
    proxy_command: str | None = None  # ProxyCommand
    identity: str | None = None  # -i / IdentityFile
    port: int | None = None  # -p / Port
    user: str | None = None  # -l / User


_OPTION_FIELDS = {"userknownhostsfile": "known_hosts", "stricthostkeychecking": "strict", "proxyjump": "proxy_jump",
                  "proxycommand": "proxy_command", "identityfile": "identity", "port": "port", "user": "user"}
_FLAG_FIELDS = {"-J": "proxy_jump", "-i": "identity", "-p": "port", "-l": "user"}


def ssh_options(args: Sequence[str]) -> SshOptions:
    """The options of an ssh command line that change how the tools connect (``-o K=V``, ``-J``, ``-i``...)."""
    found: dict[str, Any] = {}
    items = list(args)
    index = 0
    while index < len(items):
        arg = items[index]
        value = None
        if arg == "-o" and index + 1 < len(items):
            index += 1
            value = items[index]
        elif arg.startswith("-o") and len(arg) > 2:
            value = arg[2:]
        elif arg[:2] in _FLAG_FIELDS:
            flag, rest = arg[:2], arg[2:]
            if not rest and index + 1 < len(items):
                index += 1
                rest = items[index]
            found.setdefault(_FLAG_FIELDS[flag], rest)
        if value is not None:
            key, _, setting = value.replace("=", " ", 1).partition(" ")
            name = _OPTION_FIELDS.get(key.strip().lower())
            if name:
                found.setdefault(name, setting.strip())  # ssh: the first value given wins
        index += 1
    if "known_hosts" in found:
        found["known_hosts"] = tuple(found["known_hosts"].split())
    if "port" in found:
        found["port"] = int(found["port"]) if str(found["port"]).isdigit() else None
    if "strict" in found:
        found["strict"] = found["strict"].lower()
    return SshOptions(**found)


def _check_policy(checking: bool, options: SshOptions) -> Any:
    """Paramiko's policy for a host key no known_hosts file knows, as ssh would decide in batch use."""
    import paramiko

    class Reject(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            files = ", ".join(options.known_hosts) or "~/.ssh/known_hosts"
            raise UnknownHostKey(f"host key of {hostname} is not in {files}: refused (StrictHostKeyChecking); "
                                 "add it with ssh-keyscan after checking its fingerprint")

    if not checking or options.strict in ("no", "off"):
        return paramiko.AutoAddPolicy()  # Ansible's host_key_checking = False, or the inventory says so
    if options.strict == "accept-new":
        return paramiko.AutoAddPolicy()  # new keys accepted, changed ones still refused (known keys loaded)
    return Reject()


def ssh_client(host: Host, options: SshOptions) -> Any:
    """A paramiko client that checks host keys the way ssh would with the host's options."""
    import paramiko

    client = paramiko.SSHClient()
    files = [f for f in options.known_hosts if f != "/dev/null"] or ["~/.ssh/known_hosts"]
    for path in ("/etc/ssh/ssh_known_hosts", *files):
        with contextlib.suppress(OSError):
            client.get_host_keys().load(os.path.expanduser(path))
    client.set_missing_host_key_policy(_check_policy(host.host_key_checking, options))
    return client


def connect_kwargs(host: Host, connect_timeout: float, options: SshOptions | None = None) -> dict[str, Any]:
    """Paramiko connect arguments for host: every phase bounded, the inventory's key when it names one."""
    kwargs: dict[str, Any] = {
        "banner_timeout": connect_timeout, "auth_timeout": connect_timeout, "channel_timeout": connect_timeout,
    }
    key_file = host.key_file or (options.identity if options else None)
    if key_file:
        kwargs.update(key_filename=os.path.expanduser(key_file), look_for_keys=False, allow_agent=False)
    return kwargs


def _jump_host(host: Host, spec: str) -> Host:
    """The Host of a ProxyJump spec ([user@]host[:port]); it uses host's key and checking."""
    user, _, rest = spec.rpartition("@")
    address, port = rest, None
    if rest.startswith("["):
        address, _, tail = rest[1:].partition("]")
        port = int(tail[1:]) if tail.startswith(":") and tail[1:].isdigit() else None
    elif rest.count(":") == 1:
        address, _, text = rest.partition(":")
        port = int(text) if text.isdigit() else None
    return Host(name=f"{host.name} (jump host {spec})", address=address, groups=(), user=user or host.user, port=port,
                key_file=host.key_file, host_key_checking=host.host_key_checking)


def connection(host: Host, connect_timeout: float, config: Any = None) -> Any:
    """A Fabric connection to host as Ansible would make it: user, port, key, ssh args, host key checking."""
    from fabric import Config

    options = ssh_options(host.ssh_args)
    gateway: Any = None
    if options.proxy_jump and options.proxy_jump.lower() != "none":
        gateway = connection(_jump_host(host, options.proxy_jump.split(",")[-1]), connect_timeout, config)
    elif options.proxy_command and options.proxy_command.lower() != "none":
        gateway = options.proxy_command.replace("%h", host.address).replace("%p", str(host.port or 22))
    cxn = _recording_connection()(host.address, user=host.user or options.user, port=host.port or options.port,
                                  config=config or Config(), gateway=gateway,
                                  connect_timeout=max(1, math.ceil(connect_timeout)),
                                  connect_kwargs=connect_kwargs(host, connect_timeout, options))
    cxn.client = ssh_client(host, options)
    return cxn


def privileged(host: Host, command: str) -> str:
    """command as root on host: through the host's become (sudo, no password prompt) when it has one."""
    if not host.become:
        return command
    return f"sudo -n -H -u {shlex.quote(host.become_user)} -- sh -c {shlex.quote(command)}"


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
                 deadline: float | None = None, become: bool = False) -> dict[str, RunResult]:
    """Run command on every host at once (Fabric ThreadingGroup); host name -> RunResult.

    ``timeout`` bounds the command on each host; ``deadline`` (monotonic) bounds the whole call: hosts
    not done by then are reported as such, and the call returns anyway. ``become``: as root, through
    each host's become when its login is not root.
    """
    if become and len({privileged(host, command) for host in hosts}) > 1:
        results: dict[str, RunResult] = {}
        for variant in dict.fromkeys(privileged(host, command) for host in hosts):
            group = [host for host in hosts if privileged(host, command) == variant]
            results.update(run_on_hosts(group, variant, connect_timeout=connect_timeout, timeout=timeout,
                                        deadline=deadline))
        return {host.name: results[host.name] for host in hosts}
    if become and hosts:
        command = privileged(hosts[0], command)
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
