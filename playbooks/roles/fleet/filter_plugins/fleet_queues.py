"""Filters of the fleet role: queue entries of celery_worker_nodes, a plain name or a dict of options."""

from __future__ import annotations

import json

# Options a queue entry may carry besides its name (kombu Queue and Exchange arguments).
OPTION_KEYS = ("max_priority", "exchange", "exchange_type", "routing_key")
EXCHANGE_TYPES = ("direct", "topic", "fanout")


def fleet_queue_name(entry) -> str:
    """The queue name of an entry: the entry itself, or its `name` key."""
    if isinstance(entry, dict):
        return str(entry.get("name", ""))
    return str(entry)


def fleet_queue_options(entry) -> dict:
    """The options of an entry (without its name), in a fixed key order; {} for a plain name."""
    if not isinstance(entry, dict):
        return {}
    return {key: entry[key] for key in OPTION_KEYS if key in entry}


def fleet_queue_problems(entry) -> list:
    """What is wrong with one entry's options (unknown keys, bad values), as short phrases."""
    if not isinstance(entry, dict):
        return [] if isinstance(entry, str) else [f"{entry!r} is neither a queue name nor a dict"]
    name = fleet_queue_name(entry)
    problems = [f"{name}: unknown key {key!r} (known: name, {', '.join(OPTION_KEYS)})"
                for key in entry if key != "name" and key not in OPTION_KEYS]
    priority = entry.get("max_priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)
                                 or not 1 <= priority <= 255):
        problems.append(f"{name}: max_priority must be an integer from 1 to 255, not {priority!r}")
    kind = entry.get("exchange_type")
    if kind is not None and kind not in EXCHANGE_TYPES:
        problems.append(f"{name}: exchange_type must be one of {', '.join(EXCHANGE_TYPES)}, not {kind!r}")
    key = entry.get("routing_key")
    if key is not None and (not isinstance(key, str) or not key or any(c.isspace() or c in "'\"\\$`" for c in key)
                            or len(key.encode()) > 255):
        problems.append(f"{name}: routing_key must be a non-empty string without spaces or quotes, not {key!r}")
    return problems


def fleet_queue_conflicts(nodes_by_host: dict) -> list:
    """Messages for each queue named with different options in two places (host/node of each)."""
    seen: dict[str, tuple[str, dict]] = {}
    messages = []
    for host, nodes in nodes_by_host.items():
        for node in nodes or []:
            for entry in node.get("queues", []) or []:
                name, options = fleet_queue_name(entry), fleet_queue_options(entry)
                where = f"{node.get('name')}@{host}"
                if name not in seen:
                    seen[name] = (where, options)
                elif seen[name][1] != options:
                    first, first_options = seen[name]
                    messages.append(f"queue {name} has options {json.dumps(first_options, sort_keys=True)} "
                                    f"on node {first} but {json.dumps(options, sort_keys=True)} on node {where}; "
                                    "a queue's options must be the same wherever it is named")
    return messages


def fleet_queue_options_map(nodes_by_host: dict) -> dict:
    """name -> options of every queue that carries options, over the whole fleet."""
    found = {}
    for nodes in nodes_by_host.values():
        for node in nodes or []:
            for entry in node.get("queues", []) or []:
                if fleet_queue_options(entry):
                    found.setdefault(fleet_queue_name(entry), fleet_queue_options(entry))
    return dict(sorted(found.items()))


def fleet_read_lines(path: str) -> list:
    """The lines of a controller-side text file (a requirements file)."""
    with open(path, encoding="utf-8") as handle:
        return handle.read().splitlines()


class FilterModule:
    """Queue entries of celery_worker_nodes."""

    def filters(self):
        return {
            "fleet_queue_name": fleet_queue_name,
            "fleet_queue_options": fleet_queue_options,
            "fleet_queue_problems": fleet_queue_problems,
            "fleet_queue_conflicts": fleet_queue_conflicts,
            "fleet_queue_options_map": fleet_queue_options_map,
            "fleet_read_lines": fleet_read_lines,
        }
