"""The broker's rabbitmq_prometheus endpoint (no login, no AMQP): queue counts and replicas, node alarms and links."""
from __future__ import annotations

import re
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

METRICS_PORT = 15692  # rabbitmq_prometheus (rabbitmq_prometheus_enabled; on with a monitoring group)
_UNACKED, _RAFT = "rabbitmq_detailed_queue_messages_unacked", "rabbitmq_detailed_raft_"
_SERIES = re.compile(r'^(?P<name>rabbitmq_detailed_\w+)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def queues_url(address: str, vhost: str, port: int = METRICS_PORT) -> str:
    """The detailed endpoint, of one vhost only: queue message counts (each queue's leader reports them) and Raft
    metrics (one series per quorum queue member the node holds)."""
    host = f"[{address}]" if ":" in address else address
    query = urllib.parse.urlencode([("vhost", vhost), ("family", "queue_coarse_metrics"), ("family", "ra_metrics")])
    return f"http://{host}:{port}/metrics/detailed?{query}"


def _detailed(text: str, vhost: str) -> Iterator[tuple[str, str, float]]:
    """(series name, queue, value) of every detailed series of the vhost in the endpoint's text."""
    for line in text.splitlines():
        match = _SERIES.match(line.strip())
        if not match:
            continue
        labels: Mapping[str, str] = dict(_LABEL.findall(match["labels"]))
        if labels.get("vhost") == vhost and "queue" in labels:
            yield match["name"], labels["queue"], float(match["value"])


def parse_unacked(text: str, vhost: str) -> dict[str, int]:
    """Queue -> messages delivered and not yet acknowledged, of the vhost, from the endpoint's text."""
    return {queue: int(value) for name, queue, value in _detailed(text, vhost) if name == _UNACKED}


def parse_members(text: str, vhost: str) -> set[str]:
    """The quorum queues of the vhost that have a member (a Raft replica) on the node, from the endpoint's text."""
    return {queue for name, queue, _ in _detailed(text, vhost) if name.startswith(_RAFT)}


@dataclass(frozen=True)
class QueueMetrics:
    """What the broker nodes' endpoints say of the vhost's queues: unacked counts summed over the nodes, and per
    queue the hosts that lead it (report its counts) and hold a quorum member of it; answered: hosts that answered."""

    unacked: dict[str, int] = field(default_factory=dict)
    leaders: dict[str, list[str]] = field(default_factory=dict)
    members: dict[str, list[str]] = field(default_factory=dict)
    answered: tuple[str, ...] = ()


def _read(url: str, timeout: float) -> str | None:
    """The endpoint's text, or None when it does not answer (its plugin off, a firewall, the node paused)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the fleet's own address: no proxy
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None


def _ask_all(urls: Mapping[str, str], fetch: Callable[[str], Any]) -> dict[str, Any]:
    """host -> fetch(url) of every host at once."""
    with ThreadPoolExecutor(max_workers=max(1, len(urls))) as pool:
        return dict(zip(urls, pool.map(fetch, urls.values())))


def fetch_queues(url: str, vhost: str, timeout: float) -> tuple[dict[str, int], set[str]] | None:
    """(parse_unacked, parse_members) of the node at url, or None when its endpoint does not answer."""
    text = _read(url, timeout)
    return None if text is None else (parse_unacked(text, vhost), parse_members(text, vhost))


def fetch_queues_all(urls: Mapping[str, str], vhost: str, timeout: float) -> QueueMetrics | None:
    """fetch_queues of every broker node (host -> url) at once, merged; None when no node answers."""
    found_by_host = _ask_all(urls, lambda url: fetch_queues(url, vhost, timeout))
    answered = {host: found for host, found in found_by_host.items() if found is not None}
    if not answered:
        return None
    metrics = QueueMetrics(answered=tuple(answered))
    for host, (unacked, members) in answered.items():
        for queue, count in unacked.items():
            metrics.unacked[queue] = metrics.unacked.get(queue, 0) + count
            metrics.leaders.setdefault(queue, []).append(host)
        for queue in sorted(members):
            metrics.members.setdefault(queue, []).append(host)
    return metrics


_NODE_SERIES = re.compile(r'^(?P<name>rabbitmq_alarms_\w+|rabbitmq_identity_info|erlang_vm_dist_node_state)'
                          r'(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$')
DIST_UP = 3  # erlang_vm_dist_node_state: 1 pending, 2 up_pending, 3 up


def node_url(address: str, port: int = METRICS_PORT) -> str:
    """The node's own endpoint (/metrics: its alarms, its identity, its Erlang distribution links)."""
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}/metrics"


def parse_node_state(text: str) -> dict[str, Any]:
    """What one node says of itself: its name, its cluster's name, the alarms in effect and the peers it is linked to
    (peers None: the endpoint shows no Erlang distribution link at all)."""
    state: dict[str, Any] = {"node": None, "cluster": None, "alarms": [], "peers": None}
    for line in text.splitlines():
        match = _NODE_SERIES.match(line.strip())
        if not match:
            continue
        labels: Mapping[str, str] = dict(_LABEL.findall(match["labels"] or ""))
        value = float(match["value"])
        if match["name"] == "rabbitmq_identity_info":
            state["node"], state["cluster"] = labels.get("rabbitmq_node"), labels.get("rabbitmq_cluster")
        elif match["name"] == "erlang_vm_dist_node_state":
            state["peers"] = state["peers"] or []
            if value == DIST_UP and labels.get("peer", "").startswith("rabbit@"):
                state["peers"].append(labels["peer"])
        elif value > 0:
            state["alarms"].append(match["name"].removeprefix("rabbitmq_alarms_"))
    return state


def fetch_node_state(url: str, timeout: float) -> dict[str, Any] | None:
    """parse_node_state of the node at url, or None when its endpoint does not answer."""
    text = _read(url, timeout)
    return None if text is None else parse_node_state(text)


def fetch_node_states(urls: Mapping[str, str], timeout: float) -> dict[str, dict[str, Any] | None]:
    """fetch_node_state of every broker host (host -> url) at once."""
    return _ask_all(urls, lambda url: fetch_node_state(url, timeout))
