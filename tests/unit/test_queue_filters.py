"""The fleet role's queue filters: options of queue entries, and queues the broker holds with other options."""
from __future__ import annotations

import importlib.util
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[2] / "playbooks" / "roles" / "fleet" / "filter_plugins" / "fleet_queues.py"
_spec = importlib.util.spec_from_file_location("fleet_queues", PLUGIN)
queues = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(queues)

NODES = {"w1": [{"name": "feeds", "queues": [{"name": "feeds", "exchange": "feeds", "exchange_type": "topic",
                                              "routing_key": "feed.#"}]}],
         "w2": [{"name": "urgent", "queues": [{"name": "urgent", "max_priority": 10}, "celery"]}]}


def test_a_broker_holding_the_queues_as_declared_has_no_drift():
    existing = {"queues": [{"name": "urgent", "arguments": {"x-max-priority": 10}}, {"name": "celery", "arguments": {}},
                           {"name": "feeds", "arguments": []}, {"name": "other", "arguments": {"x-max-priority": 3}}],
                "exchanges": [{"name": "feeds", "type": "topic"}, {"name": "celery", "type": "direct"},
                              {"name": "urgent", "type": "direct"}]}
    assert queues.fleet_queue_drift(existing, NODES, "broker") == []
    assert queues.fleet_queue_drift({}, NODES, "broker") == []  # a fresh broker holds nothing


def test_a_changed_max_priority_names_broker_queue_node_and_the_way_out():
    existing = {"queues": [{"name": "urgent", "arguments": [["x-max-priority", 5]]},
                           {"name": "celery", "arguments": {"x-max-priority": 2}}]}
    messages = queues.fleet_queue_drift(existing, NODES, "broker", "celery")
    assert len(messages) == 2
    celery, urgent = messages
    assert celery.startswith("broker: queue celery exists on the broker with x-max-priority 2, but the inventory "
                             "declares it without max_priority (node urgent@w2)")
    assert "with x-max-priority 5, but the inventory declares it with max_priority 10" in urgent
    assert "rabbitmqctl delete_queue -p celery urgent" in urgent and "new name" in urgent


def test_an_exchange_of_another_type_is_drift():
    existing = {"exchanges": [{"name": "feeds", "type": "direct"}]}
    [message] = queues.fleet_queue_drift(existing, NODES, "broker")
    assert message.startswith("broker: exchange feeds exists on the broker as type direct, but the inventory declares "
                              "it topic (queue feeds, node feeds@w1)")


def test_a_queue_held_with_another_type_names_it_and_the_way_out():
    existing = {"queues": [{"name": "celery", "arguments": {}},  # classic, the fleet wants quorum
                           {"name": "urgent", "arguments": {"x-max-priority": 10}},  # with a priority: classic
                           {"name": "broadcast.urgent@w2", "arguments": {"x-queue-type": "quorum"}},
                           {"name": "broadcast.feeds@w1", "arguments": {"x-queue-type": "classic"}},
                           {"name": "celeryev.1234", "arguments": {}}]}  # not the fleet's: Celery's own
    messages = queues.fleet_queue_drift(existing, NODES, "b1", "celery", "quorum", ["broadcast"])
    assert len(messages) == 2, messages
    assert messages[0].startswith("b1: queue broadcast.feeds@w1 exists on the broker as a classic queue, but the "
                                  "fleet declares it quorum (celery_worker_queue_type quorum)")
    assert "set celery_worker_queue_type: classic for group celery_workers" in messages[1]
    assert "rabbitmqctl delete_queue -p celery celery" in messages[1]
    assert queues.fleet_queue_drift(existing, NODES, "b1", "celery", "", ["broadcast"]) == []  # not asked
