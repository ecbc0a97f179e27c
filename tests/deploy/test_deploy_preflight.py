"""A bad inventory is rejected before any host changes, naming the host and the variable at fault.

Each inventory of tests/inventories/bad-*/ is deployed with the sandbox hosts' connection variables
(see write_inventory), so a deploy that got past preflight would really change the hosts.
"""

from __future__ import annotations

import re

import pytest

from support.deploy import BAD_INVENTORIES, deploy, fingerprint, recap, write_inventory

HOSTS = ["broker", "worker1", "worker2"]

# inventory -> what the failure must name (host, variable or group, offending value)
EXPECTED = {
    "bad-no-broker": ["inventory group rabbitmq must hold exactly one host; it holds 0"],
    "bad-no-beat": ["inventory group celery_beat must hold exactly one host; it holds 0"],
    "bad-two-beat": ["inventory group celery_beat must hold exactly one host; it holds 2: worker1, worker2"],
    "bad-beat-not-worker": ["worker2: in group celery_beat but not in group celery_workers"],
    "bad-duplicate-node": ["worker1: celery_worker_nodes names calc more than once"],
    "bad-node-without-queues": ["worker1: celery_worker_nodes: node(s) reports have no queues"],
    "bad-concurrency-zero": ["worker1: celery_worker_nodes: concurrency not a positive integer (1-9999) for node(s) "
                             "calc: 0"],
    "bad-concurrency-injection": ["fatal: [worker1]", "argument 'concurrency'", "celery_worker_nodes", "4; rm -rf /"],
    "bad-queue-name": ['worker1: celery_worker_nodes: queue name(s) ["celery;reboot"] not valid'],
    "bad-node-name-slash": ['worker1: celery_worker_nodes: node name(s) ["../calc"] not valid'],
    "bad-node-name-space": ['worker1: celery_worker_nodes: node name(s) ["calc node"] not valid'],
    "bad-log-level": ["fatal: [worker2]", "celery_worker_log_level", "VERBOSE"],
    "bad-broadcast-queue": ['worker1: celery_broadcast_queues ["broadcast all"] must be a non-empty list of queue '
                            'names'],
    "bad-broadcast-differs": ["celery_broadcast_queues differs between worker hosts",
                              'worker1: ["broadcast", "maintenance"]; worker2: ["broadcast"]'],
    "bad-proxy-url": ["broker: fleet_http_proxy must be empty or an http(s)://host:port URL", "Pipeline-Depth"],
    "bad-unknown-node-key": ["fatal: [worker1]", "celery_worker_nodes.queue", "missing required arguments: queues"],
    "bad-read-write-path": ['worker1: celery_worker_read_write_paths: path(s) ["/srv/../etc"] not valid'],
    "bad-time-limits": ["worker1: celery_worker_task_soft_time_limit (60) and celery_worker_task_time_limit (60) "
                        "must be",
                        "0 < soft < hard < 1800"],
    "bad-two-brokers": ["inventory group rabbitmq must hold exactly one host; it holds 2: broker, worker1"],
    "bad-no-nodes": ["worker1: celery_worker_nodes is empty"],
    "bad-node-name-celerybeat": ['worker1: celery_worker_nodes: node name(s) ["celerybeat"] not valid'],
    "bad-broadcast-node-queue": ['worker1: celery_worker_nodes lists broadcast queue(s) ["broadcast"] among a '
                                 'node\'s own'],
    "bad-stop-timeout": ["worker1: celery_worker_stop_timeout is no longer used"],
    "bad-rabbitmq-package": ['broker: rabbitmq_package must be a Debian package name; got "rabbitmq-server; curl'],
    "bad-worker-host-name": ['worker3$(reboot): inventory host name "worker3$(reboot)" not valid for a worker host'],
    "bad-broker-address": ['mq: ansible_host "mq.example\\"; CELERY_APP=\\"evil" must be a host name or IPv4 address'],
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


@pytest.fixture(scope="module")
def fleet_before(deployed_fleet):
    """The deployed hosts' fingerprints before any bad inventory is tried."""
    return fingerprint(HOSTS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_inventory_is_rejected_before_any_host_changes(fleet_before, tmp_path, name):
    inventory = write_inventory(tmp_path, (BAD_INVENTORIES / name / "hosts.yml").read_text())

    run = deploy(inventory)

    assert run.returncode != 0
    for fragment in EXPECTED[name]:
        assert fragment in run.stdout, run.stdout[-3000:]
    assert "PLAY [Broker and workers are installed and running]" not in run.stdout
    assert not re.search(r"^changed: \[", run.stdout, re.MULTILINE), run.stdout[-3000:]
    assert all(s["changed"] == 0 for s in recap(run.stdout).values())
    assert fingerprint(HOSTS) == fleet_before
