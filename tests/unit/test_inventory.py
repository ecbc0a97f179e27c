"""The inventory model: ansible-inventory --list output parsed into hosts, nodes, beat, broker and --limit."""
from __future__ import annotations

import pytest

from fleetctl import inventory as fleet
from support.app import write_inventory

# What `ansible-inventory --list` prints (ansible-core marks strings with __ansible_unsafe).
LISTING = {
    "_meta": {"hostvars": {
        "broker": {"ansible_host": {"__ansible_unsafe": "10.0.0.4"}},
        "worker1": {
            "ansible_host": {"__ansible_unsafe": "10.0.0.2"},
            "celery_worker_nodes": [
                {"name": {"__ansible_unsafe": "calc"}, "queues": ["calc", "celery"], "concurrency": 2},
                {"name": "reports", "queues": ["reports"], "concurrency": 1},
            ],
            "celery_broadcast_queues": ["broadcast", "urgent"],
        },
        "worker2": {"celery_broadcast_queues": ["broadcast", "urgent"]},
    }},
    "all": {"children": ["ungrouped", "rabbitmq", "celery_workers", "celery_beat"]},
    "ungrouped": {"hosts": ["bystander"]},
    "rabbitmq": {"hosts": ["broker"]},
    "celery_workers": {"children": ["gpu"], "hosts": ["worker1"]},
    "gpu": {"hosts": ["worker2"]},
    "celery_beat": {"hosts": ["worker2"]},
}


def test_inventory_listing_becomes_hosts_nodes_beat_and_broker():
    parsed = fleet.parse_inventory(LISTING)
    assert [host.name for host in parsed.workers] == ["worker1", "worker2"]
    assert parsed.node_names == ("calc@worker1", "reports@worker1", "celery@worker2")
    assert parsed.host("worker1").nodes[0] == fleet.Node("calc", "worker1", ("calc", "celery"), 2)
    assert parsed.beat_host == "worker2" and parsed.beat.is_beat
    assert parsed.broker_host == "broker" and parsed.broker_address == "10.0.0.4"
    assert parsed.broadcast_queues == ("broadcast", "urgent")
    assert parsed.broker_url is None


def test_hosts_in_child_groups_belong_to_the_parent_group():
    parsed = fleet.parse_inventory(LISTING)
    assert set(parsed.host("worker2").groups) == {"celery_workers", "gpu", "celery_beat"}
    assert parsed.host("bystander").nodes == () and not parsed.host("bystander").is_worker


def test_address_defaults_to_the_inventory_name():
    assert fleet.parse_inventory(LISTING).host("worker2").address == "worker2"


def test_worker_without_nodes_gets_the_default_node():
    assert fleet.parse_inventory(LISTING).host("worker2").nodes == (fleet.Node("celery", "worker2", ("celery",), 2),)


def test_node_entry_fields_default_like_the_default_node():
    listing = {"_meta": {"hostvars": {"w": {"celery_worker_nodes": [{"name": "solo"}]}}},
               "celery_workers": {"hosts": ["w"]}}
    assert fleet.parse_inventory(listing).nodes == (fleet.Node("solo", "w", ("celery",), 2),)


def test_broadcast_queues_default_to_broadcast():
    listing = {"celery_workers": {"hosts": ["w"]}}
    assert fleet.parse_inventory(listing).broadcast_queues == ("broadcast",)


@pytest.mark.parametrize("nodes, message", [
    ([{"queues": ["x"]}], "needs a name"),
    ([{"name": "a", "queues": []}], "queues"),
    ([{"name": "a", "concurrency": 0}], "concurrency"),
    ([{"name": "a"}, {"name": "a"}], "unique"),
    ([], "non-empty"),
])
def test_bad_worker_nodes_are_refused_naming_host_and_variable(nodes, message):
    listing = {"_meta": {"hostvars": {"w9": {"celery_worker_nodes": nodes}}}, "celery_workers": {"hosts": ["w9"]}}
    with pytest.raises(fleet.FleetError, match=message) as error:
        fleet.parse_inventory(listing)
    assert "w9" in str(error.value) and "celery_worker_nodes" in str(error.value)


def test_more_than_one_beat_host_is_refused():
    with pytest.raises(fleet.FleetError, match="celery_beat"):
        fleet.parse_inventory({"celery_beat": {"hosts": ["a", "b"]}})


def test_broker_url_quotes_the_password_and_redact_hides_it():
    url = fleet.broker_url("10.0.0.4", "p@ss/word")
    assert url == "amqp://celery:p%40ss%2Fword@10.0.0.4:5672/celery"
    assert "p%40ss" not in fleet.redact(f"cannot reach {url}") and "***" in fleet.redact(url)


def test_load_fleet_runs_ansible_inventory_and_reads_the_broker_password(tmp_path):
    inventory = write_inventory(tmp_path / "staging", {"w1": {"calc": ["calc"]}, "w2": {"celery": ["celery"]}})
    secrets = tmp_path / "secrets"
    (secrets / "staging").mkdir(parents=True)
    (secrets / "staging" / fleet.PASSWORD_FILE).write_text("s3cret\n")

    loaded = fleet.load_fleet(inventory, environ={}, secrets_root=secrets)

    assert loaded.node_names == ("calc@w1", "celery@w2")
    assert loaded.broadcast_queues == ("broadcast", "urgent")  # from group_vars/all.yml
    assert loaded.broker_url == "amqp://celery:s3cret@127.0.0.1:5672/celery"
    assert "s3cret" not in repr(loaded)


def test_broker_url_from_environment_overrides_the_secrets_file(tmp_path):
    inventory = write_inventory(tmp_path / "prod", {"w1": {"calc": ["calc"]}})
    loaded = fleet.load_fleet(inventory, environ={"CELERY_BROKER_URL": "amqp://x:y@h//"}, secrets_root=tmp_path)
    assert loaded.broker_url == "amqp://x:y@h//"
    assert fleet.load_fleet(inventory, environ={}, secrets_root=tmp_path).broker_url is None


def test_unreadable_inventory_raises_fleet_error(tmp_path):
    with pytest.raises(fleet.FleetError, match="not found"):
        fleet.load_fleet(tmp_path / "nope.yml", environ={})
    broken = tmp_path / "broken" / "hosts.yml"
    broken.parent.mkdir()
    broken.write_text("all: [unclosed\n")
    with pytest.raises(fleet.FleetError):
        fleet.load_fleet(broken, environ={})


def test_inventory_listing_is_reused_until_the_inventory_changes(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  children:\n    celery_workers:\n      hosts:\n        w1:\n")
    first = fleet.run_ansible_inventory(inventory)
    cached = list(fleet.INVENTORY_CACHE.glob("*.json"))
    assert fleet.run_ansible_inventory(inventory) == first
    assert sorted(fleet.INVENTORY_CACHE.glob("*.json")) == sorted(cached)
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text("celery_broadcast_queues: [urgent]\n")
    changed = fleet.run_ansible_inventory(inventory)
    assert fleet.unwrap(changed["_meta"]["hostvars"]["w1"]["celery_broadcast_queues"]) == ["urgent"]


def test_a_broker_cluster_gives_one_url_per_node_the_first_broker_host_first(tmp_path):
    directory = tmp_path / "cluster"
    directory.mkdir()
    (directory / "hosts.yml").write_text(
        "all:\n  children:\n    rabbitmq:\n      hosts:\n"
        "        b1: {ansible_host: 10.0.0.11}\n        b2: {ansible_host: 10.0.0.12}\n"
        "        b3: {ansible_host: '::3'}\n"
        "    celery_workers:\n      hosts:\n        w1:\n"
        "          celery_worker_nodes: [{name: calc, queues: [calc]}]\n"
        "    celery_beat:\n      hosts:\n        w1:\n")
    (tmp_path / "secrets" / "cluster").mkdir(parents=True)
    (tmp_path / "secrets" / "cluster" / fleet.PASSWORD_FILE).write_text("pw\n")
    loaded = fleet.load_fleet(directory / "hosts.yml", environ={}, secrets_root=tmp_path / "secrets")
    assert loaded.broker_host == "b1" and loaded.broker_hosts == ("b1", "b2", "b3")
    assert loaded.broker_url == ("amqp://celery:pw@10.0.0.11:5672/celery;amqp://celery:pw@10.0.0.12:5672/celery;"
                                 "amqp://celery:pw@[::3]:5672/celery")
    assert fleet.redact(loaded.broker_url).count("***") == 3
