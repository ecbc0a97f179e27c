"""Celery remote control of the fleet's nodes through its broker: connect, inspect, cancel and add consumers."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetctl.concurrency import Background
from fleetctl.errors import UnavailableError
from fleetctl.inventory import redact

CONTROL_TIMEOUT = 2.0  # seconds a control/inspect call waits for the nodes' replies


@dataclass(frozen=True)
class CeleryView:
    """The answers of the inventory's nodes to ping and active_queues, or why there are none (error)."""

    pings: Mapping[str, Any] = field(default_factory=dict)
    queues: Mapping[str, Any] = field(default_factory=dict)
    timeout: float = 2.0
    error: str | None = None
    # queue -> {"ready": messages ready, "consumers": n} as the broker holds it (None: not declared there);
    # None: the queues were not asked for.
    depths: Mapping[str, Any] | None = None


def control_app(broker_url: str, connect_timeout: float, name: str = "fleetctl") -> Any:
    """A Celery app for control commands on the fleet's broker (no retries: an answer, not a wait)."""
    from celery import Celery

    app = Celery(name, broker=broker_url, set_as_current=False)
    app.conf.update(broker_connection_timeout=connect_timeout, broker_connection_retry=False,
                    broker_connection_max_retries=1, accept_content=["json"])
    return app


def _connect_once(conn: Any) -> None:
    # No pause between attempts: an unreachable broker is an answer, not a wait.
    conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, interval_max=0)


def check_broker(app: Any, connect_timeout: float) -> None:
    """Raise UnavailableError unless the broker accepts a connection."""
    from amqp.exceptions import AMQPError
    from kombu.exceptions import KombuError

    try:
        with app.connection_for_write(connect_timeout=connect_timeout) as conn:
            _connect_once(conn)
    except (OSError, KombuError, AMQPError) as exc:
        raise UnavailableError(redact(f"broker unreachable: {type(exc).__name__}: {exc}")) from None


def inspect(app: Any, conn: Any, names: Sequence[str], method: str, timeout: float = CONTROL_TIMEOUT) -> dict:
    """``inspect <method>`` of the named nodes; returns as soon as every one answered."""
    inspector = app.control.inspect(destination=list(names), timeout=timeout, limit=len(names), connection=conn)
    return getattr(inspector, method)() or {}


def consumer_command(app: Any, conn: Any, command: str, queue: str, targets: Sequence[str],
                     timeout: float = CONTROL_TIMEOUT) -> list[str]:
    """``cancel_consumer`` or ``add_consumer`` of queue on targets; the nodes that said ok."""
    send = getattr(app.control, command)
    replies = send(queue, destination=list(targets), reply=True, timeout=timeout, limit=len(targets),
                   connection=conn) or []
    return [node for reply in replies for node, answer in reply.items() if "ok" in (answer or {})]


def queue_depths(conn: Any, names: Sequence[str]) -> dict[str, Any]:
    """Messages ready and consumers of each queue, asked of the broker passively (declares nothing)."""
    from amqp.exceptions import NotFound

    depths: dict[str, Any] = {}
    channel = conn.channel()
    try:
        for name in names:
            try:
                _, ready, consumers = channel.queue_declare(queue=name, passive=True)
            except NotFound:  # the broker closes the channel: the next queue needs another
                depths[name] = None
                channel = conn.channel()
                continue
            depths[name] = {"ready": ready, "consumers": consumers}
    finally:
        with contextlib.suppress(Exception):
            channel.close()
    return depths


def inspect_nodes(broker_url: str, nodes: Sequence[str], ping_timeout: float, connect_timeout: float,
                  deadline: float, queues: Sequence[str] = ()) -> CeleryView:
    """ping and active_queues of the inventory's nodes, and the depth of its queues, concurrently; each
    returns once all nodes answered."""
    if not nodes and not queues:
        return CeleryView(timeout=ping_timeout)
    app = control_app(broker_url, connect_timeout, "fleet-health")
    connected = threading.Event()
    with app.connection_for_write() as conn:
        conn.transport  # noqa: B018 - imports the transport here, not in both threads below at once

    def on_connection(call: Any) -> dict[str, Any]:
        """call(conn) on a connection of its own (each question runs in its own thread)."""
        with app.connection_for_write(connect_timeout=connect_timeout) as conn:
            _connect_once(conn)
            connected.set()
            return call(conn)

    def ask(method: str) -> Background:
        return Background(lambda: on_connection(lambda conn: inspect(app, conn, nodes, method, ping_timeout)))

    try:
        pings = ask("ping") if nodes else None
        answers = ask("active_queues") if nodes else None
        depth = Background(lambda: on_connection(lambda conn: queue_depths(conn, queues))) if queues else None
        ping_answers = pings.result(deadline) if pings else {}
        queue_answers = answers.result(deadline) if answers else {}
        depth_answers = depth.result(deadline, default={}) if depth else None
    except Exception as exc:  # noqa: BLE001 - any broker failure is reported, not raised
        return CeleryView(timeout=ping_timeout, error=redact(f"{type(exc).__name__}: {exc}")[:300])
    if not connected.is_set():
        return CeleryView(timeout=ping_timeout, error=f"no connection within {connect_timeout:g} s")
    return CeleryView(pings=ping_answers or {}, queues=queue_answers or {}, timeout=ping_timeout,
                      depths=depth_answers)
