"""Re-running `make deploy`: nothing changes, check mode works, and a node that does not answer fails it."""

from __future__ import annotations

import pytest

from support.deploy import deploy, host, recap, sandbox_inventory, write_inventory

HOSTS = {"broker", "worker1", "worker2"}


def test_first_deploy_reached_every_host_without_failure(deployed_fleet):
    summary = recap(deployed_fleet.deploy_output)
    assert set(summary) == HOSTS
    assert all(s["failed"] == 0 and s["unreachable"] == 0 for s in summary.values()), summary


def test_second_deploy_changes_nothing_on_any_host(deployed_fleet):
    run = deploy()
    assert run.returncode == 0, run.stdout[-3000:]
    summary = recap(run.stdout)
    assert set(summary) == HOSTS
    assert {h: s["changed"] for h, s in summary.items()} == {h: 0 for h in HOSTS}, run.stdout[-3000:]


def test_check_mode_on_a_deployed_fleet_reports_no_change(deployed_fleet):
    run = deploy(check=True)
    assert run.returncode == 0, run.stdout[-3000:]
    assert {h: s["changed"] for h, s in recap(run.stdout).items()} == {h: 0 for h in HOSTS}, run.stdout[-3000:]


@pytest.fixture
def stopped_reports_node(deployed_fleet):
    """reports@worker1 hung behind systemd's back (SIGSTOP: its unit stays active); restored afterwards."""
    worker1 = deployed_fleet.host("worker1")
    assert worker1.run("kill -STOP $(systemctl show -p MainPID --value celery@reports.service)").rc == 0
    yield worker1
    assert worker1.run("kill -CONT $(systemctl show -p MainPID --value celery@reports.service)").rc == 0
    assert worker1.run("systemctl restart celery").rc == 0


def test_deploy_fails_naming_the_node_that_does_not_answer_ping(stopped_reports_node, tmp_path):
    inventory = sandbox_inventory()
    inventory["all"]["vars"] = {"celery_worker_verify_timeout": 4}
    run = deploy(write_inventory(tmp_path, inventory))
    assert run.returncode != 0
    assert "worker1: celery node(s) reports@worker1 did not answer ping" in run.stdout
    summary = recap(run.stdout)
    assert summary["worker1"]["failed"] == 1
    assert summary["worker2"]["failed"] == 0
    assert all(s["changed"] == 0 for s in summary.values()), run.stdout[-3000:]
    assert host("worker1").service("celery").is_running
