"""The broker's rabbitmq_prometheus endpoint (no login, no AMQP): unacked messages per queue, node alarms and links."""
from __future__ import annotations

import re
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

METRICS_PORT = 15692  # rabbitmq_prometheus (rabbitmq_prometheus_enabled; on with a monitoring group)
_SERIES = re.compile(r'^rabbitmq_detailed_queue_messages_unacked\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def unacked_url(address: str, vhost: str, port: int = METRICS_PORT) -> str:
    """The detailed endpoint, queue message counts of one vhost only."""
    host = f"[{address}]" if ":" in address else address
    query = urllib.parse.urlencode({"vhost": vhost, "family": "queue_coarse_metrics"})
    return f"http://{host}:{port}/metrics/detailed?{query}"


def parse_unacked(text: str, vhost: str) -> dict[str, int]:
    """Queue -> messages delivered and not yet acknowledged, of the vhost, from the endpoint's text."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        match = _SERIES.match(line.strip())
        if not match:
            continue
        labels: Mapping[str, str] = dict(_LABEL.findall(match["labels"]))
        if labels.get("vhost") == vhost and "queue" in labels:
            found[labels["queue"]] = int(float(match["value"]))
    return found


def fetch_unacked(url: str, vhost: str, timeout: float) -> dict[str, int] | None:
    """Queue -> unacknowledged messages, or None when the endpoint does not answer (its plugin off, a firewall)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the fleet's own address: no proxy
    try:
        with opener.open(url, timeout=timeout) as response:
            return parse_unacked(response.read().decode("utf-8", "replace"), vhost)
    except (OSError, ValueError):
        return None


def fetch_unacked_all(urls: Sequence[str], vhost: str, timeout: float) -> dict[str, int] | None:
    """fetch_unacked of every broker node at once, merged (a cluster's node reports the queues it leads); None when
    no node answers."""
    with ThreadPoolExecutor(max_workers=max(1, len(urls))) as pool:
        found_by_node = list(pool.map(lambda url: fetch_unacked(url, vhost, timeout), urls))
    answers = [found for found in found_by_node if found is not None]
    if not answers:
        return None
    merged: dict[str, int] = {}
    for found in answers:
        for queue, count in found.items():
            merged[queue] = merged.get(queue, 0) + count
    return merged


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
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return parse_node_state(response.read().decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None


def fetch_node_states(urls: Mapping[str, str], timeout: float) -> dict[str, dict[str, Any] | None]:
    """fetch_node_state of every broker host (host -> url) at once."""
    with ThreadPoolExecutor(max_workers=max(1, len(urls))) as pool:
        states = list(pool.map(lambda url: fetch_node_state(url, timeout), urls.values()))
    return dict(zip(urls, states))
