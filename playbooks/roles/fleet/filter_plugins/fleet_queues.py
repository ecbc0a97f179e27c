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


def fleet_queue_wanted(nodes_by_host: dict) -> dict:
    """name -> (options, first node naming it) of every queue of the fleet's nodes, plain ones included."""
    found: dict = {}
    for host, nodes in nodes_by_host.items():
        for node in nodes or []:
            for entry in node.get("queues", []) or []:
                found.setdefault(fleet_queue_name(entry), (fleet_queue_options(entry), f"{node.get('name')}@{host}"))
    return found


def _arguments(value) -> dict:
    """Queue arguments as rabbitmqctl's JSON formatter gives them: a mapping, or a list of pairs."""
    if isinstance(value, dict):
        return value
    pairs = {}
    for item in value or []:
        if isinstance(item, (list, tuple)) and len(item) >= 2:
            pairs[str(item[0])] = item[-1]
    return pairs


def _queue_type_drift(queues: dict, wanted: dict, broadcast: list, queue_type: str, broker: str, vhost: str) -> list:
    """Messages for each fleet queue the broker holds with another type than the fleet declares it."""
    messages = []
    prefixes = tuple(f"{name}." for name in broadcast or [])
    for name, arguments in sorted(queues.items()):
        options = wanted[name][0] if name in wanted else None
        if options is None and not (prefixes and name.startswith(prefixes)):
            continue
        want = "classic" if (options or {}).get("max_priority") else queue_type
        have = str(arguments.get("x-queue-type") or "classic")
        if have != want:
            messages.append(
                f"{broker}: queue {name} exists on the broker as a {have} queue, but the fleet declares it {want} "
                f"(celery_worker_queue_type {queue_type}); RabbitMQ cannot change the type of a queue, so its nodes "
                f"would not start. Way out: set celery_worker_queue_type: {have} for group celery_workers to keep the "
                f"queues as they are, or drain it (send it nothing new, let its consumers empty it), stop them and "
                f"delete it (rabbitmqctl delete_queue -p {vhost} {name}), then deploy")
    return messages


def fleet_queue_drift(existing: dict, nodes_by_host: dict, broker: str = "", vhost: str = "celery",
                      queue_type: str = "", broadcast: list | None = None) -> list:
    """Messages for each fleet queue or exchange the broker holds with other options than the inventory's.

    existing: {"queues": [{name, arguments}], "exchanges": [{name, type}]} as rabbitmqctl lists them.
    RabbitMQ refuses to redeclare either with other arguments (PRECONDITION_FAILED - inequivalent arg):
    the node that tries would never start, so the deploy stops before it changes anything. queue_type
    (celery_worker_queue_type): the type of the task queues and of the per-node broadcast queues
    (<broadcast>.<node>); empty: not checked.
    """
    queues = {q.get("name"): _arguments(q.get("arguments")) for q in existing.get("queues", []) or []}
    exchanges = {e.get("name"): e.get("type") for e in existing.get("exchanges", []) or []}
    messages = []
    for name, (options, where) in sorted(fleet_queue_wanted(nodes_by_host).items()):
        if name in queues:
            have, want = queues[name].get("x-max-priority"), options.get("max_priority")
            if (None if have is None else int(have)) != want:
                said = "without max_priority" if want is None else f"with max_priority {want}"
                held = "without x-max-priority" if have is None else f"with x-max-priority {have}"
                messages.append(
                    f"{broker}: queue {name} exists on the broker {held}, but the inventory declares it {said} "
                    f"(node {where}); RabbitMQ refuses to redeclare a queue with other arguments, so the node would "
                    f"not start. Way out: give the queue with the new options a new name (deploy, move publishers, "
                    f"delete the old one once empty), or stop its consumers, empty it and delete it (rabbitmqctl "
                    f"delete_queue -p {vhost} {name}), then deploy")
        exchange = options.get("exchange", name)
        kind = options.get("exchange_type", "direct")
        if exchanges.get(exchange) not in (None, kind):
            messages.append(
                f"{broker}: exchange {exchange} exists on the broker as type {exchanges[exchange]}, but the inventory "
                f"declares it {kind} (queue {name}, node {where}); RabbitMQ refuses to redeclare an exchange with "
                f"another type. Way out: name another exchange, or delete this one once nothing publishes to it "
                f"(on a worker host: celery -A <app> amqp exchange.delete {exchange}), then deploy")
    if queue_type:
        messages += _queue_type_drift(queues, fleet_queue_wanted(nodes_by_host), broadcast or [], queue_type, broker,
                                      vhost)
    return messages


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
            "fleet_queue_drift": fleet_queue_drift,
            "fleet_read_lines": fleet_read_lines,
        }
