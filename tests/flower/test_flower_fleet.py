"""Flower on the deployed sandbox fleet (group flower: worker2): a browser sees every node behind basic auth."""
from __future__ import annotations

import pytest

from support.browser import Browser
from support.deploy import ROOT, inventory_hostvars
from support.flower import get, listed_workers

FLOWER_HOST = "worker2"
NODES = ["calc@worker1", "reports@worker1", "celery@worker2"]
PASSWORD_FILE = ROOT / ".secrets" / "sandbox" / "flower-password"
SCREENSHOTS = ROOT / "build" / "test-output" / "flower"


def _password() -> str:
    return PASSWORD_FILE.read_text().strip()


@pytest.fixture(scope="module")
def flower_url(deployed_fleet) -> str:
    return f"http://{inventory_hostvars()[FLOWER_HOST]['ansible_host']}:5555"


def test_browser_with_the_generated_credentials_sees_every_node_on_the_workers_page(flower_url):
    with Browser("admin", _password()) as browser:
        browser.open(f"{flower_url}/workers")
        text = browser.wait_for_text(NODES, within=60)
        shot = browser.screenshot(SCREENSHOTS / "workers.png")
    print(f"screenshot: {shot}")
    assert [node for node in NODES if node not in text] == [], text[:2000]
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one


def test_browser_without_credentials_gets_401(flower_url):
    with Browser() as browser:  # answers the basic auth challenge with "cancel"
        browser.open(f"{flower_url}/workers")
        text = browser.text()
        browser.screenshot(SCREENSHOTS / "workers-unauthenticated.png")
    assert browser.statuses.get(f"{flower_url}/workers") == 401, browser.statuses
    assert not [node for node in NODES if node in text]


@pytest.mark.parametrize("path", ["/workers", "/tasks", "/api/workers", "/api/tasks"])
def test_pages_and_api_refuse_missing_or_wrong_credentials(flower_url, path):
    assert get(flower_url + path)[0] == 401
    assert get(flower_url + path, ("admin", _password() + "x"))[0] == 401
    assert get(flower_url + path, ("admin", _password()))[0] == 200


def test_api_lists_every_node_for_the_generated_credentials(flower_url):
    status, missing, body = listed_workers(flower_url, ("admin", _password()), NODES)
    assert status == 200
    assert missing == [], body[:2000]


def test_metrics_and_healthcheck_answer_without_credentials_as_documented(flower_url):
    status, body = get(f"{flower_url}/healthcheck")
    assert (status, body.strip()) == (200, b"OK")
    status, body = get(f"{flower_url}/metrics")
    assert status == 200 and b"flower_" in body
    assert _password().encode() not in body


def test_flower_runs_as_its_own_user_from_its_virtualenv_with_no_secret_on_its_command_line(deployed_fleet):
    host = deployed_fleet.host(FLOWER_HOST)
    assert host.service("flower.service").is_enabled and host.service("flower.service").is_running
    rows = [line.split(None, 1) for line in host.check_output("ps -eo user=,args=").splitlines()]
    flower = [(user, args) for user, args in rows if "celery flower" in args]
    assert flower == [("flower", "/opt/flower/venv/bin/python3 /opt/flower/venv/bin/celery flower")], flower
    env = host.file("/etc/conf.d/flower")
    assert (env.user, env.group, env.mode) == ("root", "flower", 0o640)
    pinned = [line for line in (ROOT / "playbooks/roles/flower/files/requirements.txt").read_text().splitlines()
              if line.startswith("flower==")]
    version = host.check_output("/opt/flower/venv/bin/python3 -c 'import flower; print(flower.__version__)'")
    assert pinned == [f"flower=={version}"]
