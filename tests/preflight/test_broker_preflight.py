"""Bad broker and TLS variables are rejected by preflight, naming host and variable, before any host changes.

Each case is deployed with `make deploy` to the default inventory's hosts at addresses that lead nowhere
(write_inventory offline); one of them also on the live default fleet (marked sandbox), whose
fingerprints show that no host changed.
"""

from __future__ import annotations

import copy
import subprocess

import pytest

from support.deploy import (
    assert_refused_in_preflight,
    deploy,
    deploy_all,
    fingerprint,
    sandbox_inventory,
    selected_params,
    write_inventory,
)

HOSTS = ["broker", "worker1", "worker2"]
# Preflight only looks for the PEM block markers: these never reach a host.
CERT = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIBfake\n-----END PRIVATE KEY-----\n"
TLS = {"rabbitmq_tls_ca_cert": CERT, "rabbitmq_tls_cert": CERT, "rabbitmq_tls_key": KEY}
CLIENT = {"celery_worker_tls_cert": CERT, "celery_worker_tls_key": KEY}

# case -> (variables of the broker, variables of worker1, what the failure must name)
CASES = {
    "cert without key": ({"rabbitmq_tls_ca_cert": CERT, "rabbitmq_tls_cert": CERT}, {},
                         "broker: rabbitmq_tls_cert and rabbitmq_tls_key go together (TLS needs both); "
                         "only rabbitmq_tls_cert is set"),
    "key without cert": ({"rabbitmq_tls_ca_cert": CERT, "rabbitmq_tls_key": KEY}, {},
                         "broker: rabbitmq_tls_cert and rabbitmq_tls_key go together (TLS needs both); "
                         "only rabbitmq_tls_key is set"),
    "TLS without CA": ({"rabbitmq_tls_cert": CERT, "rabbitmq_tls_key": KEY}, {},
                       "broker: rabbitmq_tls_cert is set but rabbitmq_tls_ca_cert is empty"),
    "CA without TLS": ({"rabbitmq_tls_ca_cert": CERT}, {},
                       "broker: rabbitmq_tls_ca_cert is set but rabbitmq_tls_cert and rabbitmq_tls_key are not"),
    "CA not a file": ({**TLS, "rabbitmq_tls_ca_cert": "/nonexistent/ca.pem"}, {},
                      'broker: rabbitmq_tls_ca_cert must be PEM text or the path of a PEM file on the controller '
                      'holding a certificate; "/nonexistent/ca.pem" is neither'),
    "key that is a certificate": ({**TLS, "rabbitmq_tls_key": CERT}, {},
                                  "broker: rabbitmq_tls_key must be PEM text or the path of a PEM file on the "
                                  "controller holding a private key"),
    "peer verification without TLS": ({"rabbitmq_tls_verify_peer": True}, {},
                                      "broker: rabbitmq_tls_verify_peer is on but the broker has no TLS"),
    "TLS only without TLS": ({"rabbitmq_tls_only": True}, {},
                             "broker: rabbitmq_tls_only is on but the broker has no TLS"),
    "worker without client cert under peer verification": (
        {**TLS, "rabbitmq_tls_verify_peer": True}, {"celery_worker_tls_cert": CERT, "celery_worker_tls_key": KEY},
        "worker2: the broker verifies client certificates (rabbitmq_tls_verify_peer) but celery_worker_tls_cert and "
        "celery_worker_tls_key are not set for this host"),
    "client key without cert": (TLS, {"celery_worker_tls_key": KEY},
                                "worker1: celery_worker_tls_cert and celery_worker_tls_key go together; "
                                "only celery_worker_tls_key is set"),
    "client cert without broker TLS": ({}, {"celery_worker_tls_cert": CERT, "celery_worker_tls_key": KEY},
                                       "worker1: celery_worker_tls_cert is set but the broker has no TLS"),
    "client cert not a file": (TLS, {"celery_worker_tls_cert": "/nonexistent/client.pem",
                                     "celery_worker_tls_key": KEY},
                               "worker1: celery_worker_tls_ca_cert, celery_worker_tls_cert and celery_worker_tls_key "
                               "must each be PEM text or the path of a PEM file on the controller; not a file: "
                               "/nonexistent/client.pem"),
    "disk free limit with both forms": ({"rabbitmq_disk_free_limit": {"relative": 1.0, "absolute": "2GB"}}, {},
                                        "broker: rabbitmq_disk_free_limit must be "
                                        "{relative: <multiple of RAM, above 0>} or {absolute: <size such as 50GB>}"),
    "disk free limit of zero": ({"rabbitmq_disk_free_limit": {"relative": 0}}, {},
                                "broker: rabbitmq_disk_free_limit must be"),
    "disk free limit in furlongs": ({"rabbitmq_disk_free_limit": {"absolute": "2 furlongs"}}, {},
                                    "broker: rabbitmq_disk_free_limit must be"),
    "descriptor limit too low": ({"rabbitmq_nofile_limit": 100}, {},
                                 "broker: rabbitmq_nofile_limit must be a whole number from 1024 to 1048576; got 100"),
}

# Flower runs on worker2 (group flower): case -> (variables of the broker, variables of worker2, what the
# failure must name).
FLOWER_CASES = {
    "Flower without client cert under peer verification": (
        {**TLS, "rabbitmq_tls_verify_peer": True},
        {**CLIENT, "flower_tls_cert": "", "flower_tls_key": ""},
        "worker2: the broker broker verifies client certificates (rabbitmq_tls_verify_peer) but flower_tls_cert and "
        "flower_tls_key are not set for this host"),
    "Flower key without cert": (TLS, {"flower_tls_key": KEY},
                                "worker2: flower_tls_cert and flower_tls_key go together; only flower_tls_key is set"),
    "Flower CA not a file": (TLS, {"flower_tls_ca_cert": "/nonexistent/ca.pem"},
                             "worker2: flower_tls_ca_cert, flower_tls_cert and flower_tls_key must each be PEM text or "
                             "the path of a PEM file on the controller; not a file: /nonexistent/ca.pem"),
    "Flower key that is a certificate": (TLS, {"flower_tls_cert": CERT, "flower_tls_key": CERT},
                                         "worker2: flower_tls_ca_cert and flower_tls_cert must each hold a "
                                         "certificate, flower_tls_key a private key (PEM text or a controller-side "
                                         "PEM file); wrong: flower_tls_key"),
}


HIDDEN = ("MIIBfake",)  # PEM text is never echoed


def _inventory(broker_vars: dict, worker_vars: dict, worker="worker1") -> dict:
    """The sandbox inventory with variables added to the broker and to a worker host (worker1)."""
    inventory = copy.deepcopy(sandbox_inventory())
    children = inventory["all"]["children"]
    children["rabbitmq"]["hosts"]["broker"] = broker_vars
    children["celery_workers"]["hosts"][worker] = {**(children["celery_workers"]["hosts"][worker] or {}), **worker_vars}
    return inventory


def _case_inventory(case: str) -> dict:
    """The inventory of a case of CASES or FLOWER_CASES."""
    if case in CASES:
        broker_vars, worker_vars, _ = CASES[case]
        return _inventory(broker_vars, worker_vars)
    broker_vars, flower_vars, _ = FLOWER_CASES[case]
    inventory = _inventory(broker_vars, flower_vars, worker="worker2")
    # worker1 passes its own TLS checks, which run first: only Flower's are left to fail.
    inventory["all"]["children"]["celery_workers"]["hosts"]["worker1"].update(CLIENT)
    return inventory


@pytest.fixture(scope="module")
def refusals(request, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """case -> the offline deploy of each case this session tests, several at a time."""
    cases = selected_params(request, "case")
    return deploy_all({case: write_inventory(tmp_path_factory.mktemp("case"), _case_inventory(case), offline=True)
                       for case in cases})


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_broker_variables_are_rejected_before_any_host_is_reached(refusals, case):
    assert_refused_in_preflight(refusals[case], [CASES[case][2]], HIDDEN)


@pytest.mark.parametrize("case", sorted(FLOWER_CASES))
def test_bad_flower_tls_variables_are_rejected_before_any_host_is_reached(refusals, case):
    assert_refused_in_preflight(refusals[case], [FLOWER_CASES[case][2]], HIDDEN)


@pytest.mark.sandbox
def test_bad_tls_variables_are_rejected_before_any_host_of_a_live_fleet_changes(deployed_fleet, tmp_path):
    before = fingerprint(HOSTS)
    case = "key that is a certificate"

    run = deploy(write_inventory(tmp_path, _case_inventory(case)))

    assert_refused_in_preflight(run, [CASES[case][2]], HIDDEN)
    assert fingerprint(HOSTS) == before
