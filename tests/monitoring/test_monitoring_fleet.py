"""Prometheus on the deployed sandbox fleet (group monitoring: worker1): every target up, the fleet's alerts fire."""
from __future__ import annotations

import copy
import json
import time
import urllib.parse
import urllib.request

import pytest

from support.deploy import deploy, inventory_hostvars, recap, sandbox_inventory, write_inventory

MONITORING_HOST = "worker1"
HOSTS = ["broker", "worker1", "worker2"]
# Every job of conf.d/prometheus/prometheus.yml.j2 on the sandbox, and the hosts it scrapes.
JOBS = {"prometheus": {"worker1"}, "node": set(HOSTS), "rabbitmq": {"broker"}, "rabbitmq_queues": {"broker"},
        "flower": {"worker2"}}
RULES = {"CeleryNodeDown", "CeleryNodeQueueDrift", "HeartbeatStale", "FleetHostDown", "BrokerNodeDown", "BrokerAlarm",
         "QueueWithoutConsumer", "QueueBacklogGrowing", "TaskFailureRatioHigh"}
NODES = {"calc@worker1", "reports@worker1", "celery@worker2"}
WITHIN = 120  # seconds for a target, an alert or its resolution to show (a bound against hanging)


def _api(path: str, **params: str) -> dict:
    """The data of a Prometheus HTTP API answer (no proxy)."""
    address = inventory_hostvars()[MONITORING_HOST]["ansible_host"]
    url = f"http://{address}:9090/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=30) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return answer["data"]


def _until(check, what: str, within: float = WITHIN):
    """check()'s first truthy value, polled every 2 s; fails naming what did not happen in time."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} within {within} s"
        time.sleep(2)


def _targets() -> dict[str, dict[str, str]]:
    """job -> inventory host -> health of every active scrape target."""
    found: dict[str, dict[str, str]] = {}
    for target in _api("targets")["activeTargets"]:
        found.setdefault(target["labels"]["job"], {})[target["labels"]["host"]] = target["health"]
    return found


def _firing(alertname: str, **labels: str) -> list[dict]:
    return [a for a in _api("alerts")["alerts"] if a["labels"]["alertname"] == alertname and a["state"] == "firing"
            and all(a["labels"].get(k) == v for k, v in labels.items())]


def test_every_scrape_target_is_up(deployed_fleet):
    def all_up():
        targets = _targets()
        return targets if all(health == "up" for hosts in targets.values() for health in hosts.values()) else None

    targets = _until(all_up, "every scrape target up")
    assert {job: set(hosts) for job, hosts in targets.items()} == JOBS


def test_fleet_alert_rules_are_loaded(deployed_fleet):
    rules = {rule["name"]: rule for group in _api("rules")["groups"] for rule in group["rules"]}
    assert set(rules) == RULES
    assert rules["CeleryNodeDown"]["duration"] == 120  # prometheus_alert_celery_node_down_for: 2m
    assert not _firing("CeleryNodeDown") and not _firing("BrokerNodeDown") and not _firing("FleetHostDown")


def _series(query: str) -> dict[str, float]:
    """node label (or "") -> value of each series of an instant query."""
    return {r["metric"].get("node", ""): float(r["value"][1]) for r in _api("query", query=query)["result"]}


def test_worker_hosts_report_every_node_up_on_its_queues_and_a_fresh_heartbeat(deployed_fleet):
    # Tests before this one restart nodes and change their queues (a node being restarted is reported down, a node
    # whose queues changed in /etc/conf.d/celery drifts until it restarts; each host writes its metrics every 30 s):
    # wait for one scrape in which the fleet has settled.
    def settled():
        up, drift = _series("celery_fleet_node_up"), _series("celery_fleet_node_queue_drift")
        return (up, drift) if up == dict.fromkeys(NODES, 1.0) and drift == dict.fromkeys(NODES, 0.0) else None

    up, drift = _until(settled, "celery_fleet_node_up 1 and celery_fleet_node_queue_drift 0 for every inventory node")
    assert up == dict.fromkeys(NODES, 1.0)
    assert drift == dict.fromkeys(NODES, 0.0)
    assert _series("min(celery_fleet_broker_reachable)") == {"": 1.0}
    assert _series("count(celery_fleet_broker_reachable)") == {"": 2.0}  # both worker hosts
    age = _until(lambda: _series("time() - max(celery_fleet_heartbeat_timestamp_seconds)"), "a heartbeat")[""]
    assert age < 90


def test_queue_metrics_show_each_queue_with_its_consumers(deployed_fleet):
    def consumers():
        result = _api("query", query='rabbitmq_detailed_queue_consumers{vhost="celery"}')["result"]
        return {r["metric"]["queue"]: float(r["value"][1]) for r in result}

    found = _until(lambda: consumers().get("calc"), "queue calc in the broker's metrics")
    assert found >= 1
    assert consumers()["celery"] >= 2  # calc@worker1 and celery@worker2


@pytest.fixture
def short_alert_delays(deployed_fleet, tmp_path):
    """The sandbox deployed with alerts that fire 5 s after their condition, scraped every 2 s; then as before."""
    inventory = copy.deepcopy(sandbox_inventory())
    inventory["all"]["children"]["monitoring"]["vars"] = {
        "prometheus_alert_celery_node_down_for": "5s", "prometheus_scrape_interval": "2s"}
    inventory["all"]["children"]["celery_workers"]["vars"] = {"celery_metrics_interval": 3}
    run = deploy(write_inventory(tmp_path, inventory))
    assert run.returncode == 0, run.stdout[-3000:]
    assert recap(run.stdout)[MONITORING_HOST]["changed"] > 0
    yield
    run = deploy()
    assert run.returncode == 0, run.stdout[-3000:]


def test_stopped_node_fires_celery_node_down_until_it_is_back(short_alert_delays, deployed_fleet):
    worker1 = deployed_fleet.host("worker1")
    _until(lambda: _api("rules")["groups"][0]["rules"][0]["duration"] == 5, "the 5 s rule loaded", within=30)
    assert worker1.run("systemctl stop celery@reports.service").rc == 0
    try:
        alert = _until(lambda: _firing("CeleryNodeDown", node="reports@worker1"), "CeleryNodeDown firing")
        assert [a["labels"]["node"] for a in _firing("CeleryNodeDown")] == ["reports@worker1"], alert
        assert alert[0]["labels"]["host"] == "worker1"  # the host whose node exporter carries it
    finally:
        assert worker1.run("systemctl start celery@reports.service").rc == 0
    _until(lambda: not _firing("CeleryNodeDown"), "CeleryNodeDown resolved")
