"""A bad inventory is rejected before any host changes, naming the host and the variable at fault.

Each inventory of tests/inventories/bad-*/ is deployed with `make deploy`, its hosts given addresses that
lead nowhere (write_inventory offline): preflight runs on the controller, so it needs no fleet, and a
deploy that got past it would fail as unreachable. A few of them are also deployed with the running
default fleet's connection variables (marked sandbox): there a deploy that got past preflight would
really change the hosts, and their fingerprints show that none did. Unusual but valid input passes
preflight (run alone: no host is contacted).
"""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from support.deploy import (
    BAD_INVENTORIES,
    ROOT,
    assert_refused_in_preflight,
    deploy,
    deploy_all,
    fingerprint,
    recap,
    selected_params,
    write_inventory,
)

HOSTS = ["broker", "worker1", "worker2"]
# How a name longer than 40 characters appears in a message (truncated).
LONG_Q = '["' + "q" * 37 + '..."]'
LONG_B = '["' + "b" * 37 + '..."]'

# inventory -> what the failure must name (host, variable or group, offending value)
EXPECTED = {
    "bad-no-broker": ["inventory group rabbitmq must hold one host or an odd number of hosts (a cluster of 3, 5, "
                      "...); it holds 0"],
    "bad-no-beat": ["inventory group celery_beat must hold exactly one host; it holds 0"],
    "bad-two-beat": ["inventory group celery_beat must hold exactly one host; it holds 2: worker1, worker2"],
    "bad-beat-not-worker": ["worker2: in group celery_beat but not in group celery_workers"],
    "bad-duplicate-node": ["worker1: celery_worker_nodes names calc more than once"],
    "bad-node-without-queues": ["worker1: celery_worker_nodes: node(s) reports have no queues"],
    "bad-concurrency-zero": ["worker1: celery_worker_nodes: concurrency not a positive integer (1-9999) for node(s) "
                             "calc: 0"],
    "bad-concurrency-injection": ["fatal: [worker1]", "argument 'concurrency'", "celery_worker_nodes", "4; rm -rf /"],
    "bad-queue-name": ['worker1: celery_worker_nodes: queue name(s) ["celery;reboot"] not valid: character not '
                       "allowed"],
    "bad-queue-name-newline": ['worker1: celery_worker_nodes: queue name(s) ["reports\\n"] not valid: character not '
                               "allowed"],
    "bad-queue-name-leading-dash": ['worker1: celery_worker_nodes: queue name(s) ["-calc"] not valid: character not '
                                    "allowed, or empty (letters, digits, '_', '.', ':', '-', not '-' first"],
    "bad-queue-name-reserved": ['worker1: celery_worker_nodes: queue name(s) ["amq.jobs"] not valid: reserved prefix '
                                "'amq.'"],
    "bad-queue-name-too-long": [f"worker1: celery_worker_nodes: queue name(s) {LONG_Q} not valid: too long "
                                "(RabbitMQ refuses queue and exchange names longer than 255 bytes"],
    "bad-node-name-slash": ['worker1: celery_worker_nodes: node name(s) ["../calc"] not valid'],
    "bad-node-name-space": ['worker1: celery_worker_nodes: node name(s) ["calc node"] not valid'],
    "bad-log-level": ["fatal: [worker2]", "celery_worker_log_level", "VERBOSE"],
    "bad-broadcast-queue": ['worker1: celery_broadcast_queues ["broadcast all"] must be a non-empty list of queue '
                            'names', 'character not allowed, or empty: ["broadcast all"]'],
    "bad-broadcast-queue-reserved": [f'{host}: celery_broadcast_queues: name(s) ["amq.maintenance"] not valid: '
                                     "reserved prefix 'amq.'" for host in ("worker1", "worker2")],
    "bad-broadcast-queue-too-long": [f"{host}: celery_broadcast_queues: name(s) {LONG_B} not valid: too long"
                                     for host in ("worker1", "worker2")],
    "bad-broadcast-node-queue-too-long": [f"{host}: celery_broadcast_queues: the node queue(s) "
                                          f"<broadcast>.<node>@<host> {LONG_B} would be too long"
                                          for host in ("worker1", "worker2")],
    "bad-broadcast-differs": ["celery_broadcast_queues differs between worker hosts",
                              'worker1: ["broadcast", "maintenance"]; worker2: ["broadcast"]'],
    "bad-proxy-url": ["broker: fleet_http_proxy must be empty or an http(s)://host:port URL", "Pipeline-Depth"],
    "bad-unknown-node-key": ["fatal: [worker1]", "celery_worker_nodes.queue", "missing required arguments: queues"],
    "bad-read-write-path": ['worker1: celery_worker_read_write_paths: path(s) ["/srv/../etc"] not valid'],
    "bad-time-limits": ["worker1: celery_worker_task_soft_time_limit (60) and celery_worker_task_time_limit (60) "
                        "must be",
                        "0 < soft < hard < 1800"],
    "bad-two-brokers": ["inventory group rabbitmq must hold one host or an odd number of hosts", "it holds 2: broker, "
                        "worker1. An even count adds no fault tolerance", "of two nodes either one down stops both"],
    "bad-four-brokers": ["inventory group rabbitmq must hold one host or an odd number of hosts",
                         "it holds 4: broker, worker1, worker2, spare-broker. An even count adds no fault tolerance"],
    "bad-no-nodes": ["worker1: celery_worker_nodes is empty"],
    "bad-queue-options-differ": ['queue urgent has options {"max_priority": 10} on node celery@worker1 but '
                                 '{"max_priority": 5} on node celery@worker2'],
    "bad-queue-option-unknown": ["worker1: celery_worker_nodes: node celery: queue urgent: unknown key 'priority'",
                                 "queue feeds: exchange_type must be one of direct, topic, fanout, not 'headers'"],
    "bad-two-redis": ["inventory group redis may hold at most one host", "it holds 2: broker, worker2"],
    "bad-two-flower": ["inventory group flower may hold at most one host (the fleet's web monitor); it holds 2: "
                       "broker, worker2"],
    "bad-flower-password": ["worker2: flower_password must hold at least 16 printable characters and no ','",
                            "its value is not shown"],
    "bad-flower-port": ["worker2: flower_port must be a port number from 1024 to 65535", "got 80",
                        "worker2: flower_user must be printable characters without spaces, ':' or ','",
                        'got "ops:admin"'],
    "bad-prometheus-durations": ["worker1: prometheus_alert_host_down_for, prometheus_scrape_interval must be "
                                 "Prometheus durations such as 30s, 5m or 1h", '["2 minutes", "15"]',
                                 "worker1: prometheus_alert_heartbeat_age must be a positive number of seconds; got 0"],
    "bad-node-name-celerybeat": ['worker1: celery_worker_nodes: node name(s) ["celerybeat"] not valid'],
    "bad-broadcast-node-queue": ['worker1: celery_worker_nodes lists broadcast queue(s) ["broadcast"] among a '
                                 'node\'s own'],
    "bad-stop-timeout": ["worker1: celery_worker_stop_timeout is no longer used"],
    "bad-rabbitmq-package": ['broker: rabbitmq_package must be a Debian package name; got "rabbitmq-server; curl'],
    "bad-worker-host-name": ['worker3$(reboot): inventory host name "worker3$(reboot)" not valid for a worker host'],
    "bad-broker-address": ['mq: ansible_host "mq.example\\"; CELERY_APP=\\"evil" must be an IPv4 address, an IPv6 '
                           "address (no zone index) or a host name"],
    "bad-ansible-host": ['worker3: ansible_host "10.0.0.300" must be an IPv4 address, an IPv6 address',
                         'worker4: ansible_host "fd00::5::6" must be an IPv4 address, an IPv6 address'],
    "bad-serial": [f'{host}: celery_worker_serial must be a positive integer (worker hosts at a time) or a percentage '
                   'from 1% to 100% (of the worker hosts); got "150%"' for host in ("worker1", "worker2")],
    "bad-serial-differs": ["celery_worker_serial differs between worker hosts (worker1: 1; worker2: 25%)"],
    "bad-ca-bundle-missing": ['broker: fleet_ca_bundle must name a file on the controller; '
                              '"/etc/ssl/no-such-bundle.pem"'],
    "bad-ca-bundle-dotdot": ["broker: fleet_ca_bundle must be a path without '..'",
                             "/etc/ssl/certs/../certs/ca-certificates.crt"],
    "bad-password-file-dotdot": ["broker: fleet_broker_password_file must be an absolute path without '..'",
                                 "/var/tmp/fleet/../../tmp/rabbitmq-celery-password"],
    "bad-password-file-in-repository": ["broker: fleet_broker_password_file must be an absolute path without '..', "
                                        "outside the repository or under its git-ignored .secrets/",
                                        "/playbooks/inventories/rabbitmq-celery-password"],
}


def test_every_bad_inventory_has_an_expected_failure():
    assert {p.name for p in BAD_INVENTORIES.glob("bad-*")} == set(EXPECTED)


# Refused on the live default fleet too: a fleet-wide check, a shell injection, a secret that is not shown.
ON_THE_FLEET = ("bad-two-beat", "bad-concurrency-injection", "bad-flower-password")
HIDDEN = ("open,sesame",)  # bad-flower-password: a refused password is not shown either


@pytest.fixture(scope="module")
def refusals(request, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """name -> the offline deploy of each bad inventory this session tests, several at a time."""
    names = selected_params(request, "name")
    return deploy_all({name: write_inventory(tmp_path_factory.mktemp(name), (BAD_INVENTORIES / name / "hosts.yml")
                                             .read_text(), offline=True) for name in names})


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_inventory_is_rejected_before_any_host_is_reached(refusals, name):
    assert_refused_in_preflight(refusals[name], EXPECTED[name], HIDDEN)


@pytest.fixture(scope="module")
def fleet_before(deployed_fleet):
    """The deployed hosts' fingerprints before any bad inventory is tried on them."""
    return fingerprint(HOSTS)


@pytest.mark.sandbox
@pytest.mark.parametrize("fleet_case", ON_THE_FLEET)
def test_bad_inventory_is_rejected_before_any_host_of_a_live_fleet_changes(fleet_before, tmp_path, fleet_case):
    run = deploy(write_inventory(tmp_path, (BAD_INVENTORIES / fleet_case / "hosts.yml").read_text()))

    assert_refused_in_preflight(run, EXPECTED[fleet_case], HIDDEN)
    assert fingerprint(HOSTS) == fleet_before


# Valid, if unusual: an IPv6 address on a worker host, queue names with dots and colons (a broadcast
# queue too), a rolling batch size of one host. The addresses lead nowhere (documentation and unique
# local ranges): preflight runs on the controller, and a host contacted would fail as unreachable.
UNUSUAL = {"all": {"children": {
    "rabbitmq": {"hosts": {"broker": {"ansible_host": "192.0.2.10"}}},
    "celery_workers": {
        "hosts": {
            "worker1": {"ansible_host": "fd00::5", "celery_worker_nodes": [
                {"name": "feed", "queues": ["feed.import", "jobs:high"], "concurrency": 2},
                {"name": "calc.v2", "queues": ["calc.v2:priority", "celery"], "concurrency": 1}]},
            "worker2": {"ansible_host": "worker2.sandbox.example"},
        },
        "vars": {"celery_broadcast_queues": ["fleet.broadcast", "ops:maintenance"], "celery_worker_serial": 1},
    },
    "celery_beat": {"hosts": {"worker2": {}}},
}}}


def test_unusual_but_valid_inventory_passes_preflight(tmp_path):
    inventory = tmp_path / "unusual" / "hosts.yml"
    inventory.parent.mkdir()
    document = {**UNUSUAL, "all": {**UNUSUAL["all"], "vars": {
        "fleet_broker_password_file": str(tmp_path / "secrets" / "rabbitmq-celery-password")}}}
    inventory.write_text(yaml.safe_dump(document, sort_keys=False))

    # The preflight play runs whatever the tags; --tags preflight leaves every task of the later plays out.
    run = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(inventory), "playbooks/site.yml",
                          "--tags", "preflight"], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, timeout=600,
                         env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1"))

    assert run.returncode == 0, run.stdout[-3000:]
    assert "TASK [celery_worker : Worker variables of the host are valid]" in run.stdout
    summary = recap(run.stdout)
    assert set(summary) == {"broker", "worker1", "worker2"}
    assert all(s["failed"] == 0 and s["unreachable"] == 0 for s in summary.values()), run.stdout[-3000:]
