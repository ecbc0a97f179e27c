"""Bad application input is refused before any host is reached, naming host and variable (no sandbox needed)."""
from __future__ import annotations

import subprocess

import pytest
import yaml

from support.deploy import OFFLINE_NETWORK, ROOT
from support.release import SAMPLE_APP

FLEETCTL = ROOT / ".venv" / "bin" / "fleetctl"


def _inventory(tmp_path, **variables):
    """An inventory of hosts that do not exist (OFFLINE_NETWORK): nothing may try to reach them."""
    document = {"all": {"children": {
        "rabbitmq": {"hosts": {"b-mq": {"ansible_host": f"{OFFLINE_NETWORK}.2"}}},
        "celery_workers": {"vars": variables, "hosts": {"b-w1": {"ansible_host": f"{OFFLINE_NETWORK}.3"}}},
        "celery_beat": {"hosts": {"b-w1": None}}}}}
    path = tmp_path / "bad-app" / "hosts.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize("variables, message", [
    ({"celery_worker_app_source": "/nonexistent/shop", "celery_worker_app": "shop"},
     'b-w1: celery_worker_app_source "/nonexistent/shop": no such file or directory on the controller'),
    ({"celery_worker_app_source": str(SAMPLE_APP), "celery_worker_app": "shop; rm -rf /"},
     'b-w1: celery_worker_app "shop; rm -rf /" must be the -A value'),
    ({"celery_worker_app_source": str(SAMPLE_APP)},
     "b-w1: celery_worker_app_source is set but celery_worker_app (the -A value"),
    ({"celery_worker_app_source": str(SAMPLE_APP), "celery_worker_app": "shipyard.celery:app",
      "celery_worker_app_environment": {"CELERY_BROKER_URL": "amqp://elsewhere"}},
     "b-w1: celery_worker_app_environment must map variable names"),
    ({"celery_worker_app_source": str(SAMPLE_APP), "celery_worker_app": "shipyard.celery:app",
      "celery_worker_app_keep_releases": 1}, "b-w1: celery_worker_app_keep_releases must be an integer of at least 2"),
    ({"celery_worker_app_source": str(SAMPLE_APP), "celery_worker_app": "shipyard.celery:app",
      "celery_worker_app_smoke_task": {"args": [1]}}, "b-w1: celery_worker_app_smoke_task must be a task name"),
])
def test_bad_app_variables_fail_the_deploy_preflight_naming_host_and_variable(tmp_path, variables, message):
    done = subprocess.run(["make", "--no-print-directory", "deploy", f"INVENTORY={_inventory(tmp_path, **variables)}"],
                          cwd=ROOT, text=True, capture_output=True, timeout=300)
    assert done.returncode != 0
    assert message in done.stdout + done.stderr, (done.stdout + done.stderr)[-3000:]
    assert "Broker, result backend and workers are installed" not in done.stdout  # no host was reached


def test_a_release_id_of_other_characters_is_refused_before_any_host_is_reached(tmp_path):
    inventory = _inventory(tmp_path, celery_worker_app_source=str(SAMPLE_APP), celery_worker_app="shipyard.celery:app")
    done = subprocess.run([str(FLEETCTL), "release", "--inventory", str(inventory), "--version", "v1;rm"],
                          cwd=ROOT, text=True, capture_output=True, timeout=120)
    assert done.returncode == 2
    assert "VERSION: release id 'v1;rm' must be 1-100 characters of [A-Za-z0-9._-]" in done.stderr, done.stderr
