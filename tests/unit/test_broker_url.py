"""The fleet role's fleet_broker_url filter: the URL the workers and Flower reach the broker by."""
from __future__ import annotations

import importlib.util
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[2] / "playbooks" / "roles" / "fleet" / "filter_plugins" / "fleet_address.py"
_spec = importlib.util.spec_from_file_location("fleet_address", PLUGIN)
address = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(address)


def test_one_broker_without_tls_is_plain_amqp_on_5672():
    assert address.fleet_broker_url(["10.77.0.4"], "secret", False) == "amqp://celery:secret@10.77.0.4:5672/celery"


def test_a_cluster_with_tls_lists_every_node_in_order_on_5671():
    assert address.fleet_broker_url(["b1", "b2", "b3"], "pw", True) == (
        "amqps://celery:pw@b1:5671/celery;amqps://celery:pw@b2:5671/celery;amqps://celery:pw@b3:5671/celery")


def test_every_character_of_the_password_that_a_url_shell_or_systemd_reads_is_percent_encoded():
    url = address.fleet_broker_url(["h"], "a/b:c@d%e f$`\"';", False)
    assert url == "amqp://celery:a%2Fb%3Ac%40d%25e%20f%24%60%22%27%3B@h:5672/celery"


def test_an_ipv6_address_is_bracketed():
    assert address.fleet_broker_url(["fd00::1"], "pw", False) == "amqp://celery:pw@[fd00::1]:5672/celery"
