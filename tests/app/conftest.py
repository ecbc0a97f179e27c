"""Fixtures for the application tests: a local RabbitMQ vhost, real worker nodes, a test inventory."""
from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest

from support.app import (
    FLEET,
    FLEETCTL,
    LATE,
    REPO,
    SCRIPTS,
    WorkerNode,
    _clean_env,
    _rabbitmqctl,
    host_dirs,
    wait_ready,
    write_inventory,
)


@pytest.fixture(scope="session")
def broker_url():
    """A throwaway vhost and user on the local RabbitMQ (started if needed, left running)."""
    script = str(SCRIPTS / "local-rabbitmq.sh")
    subprocess.run([script, "start"], check=True, capture_output=True, text=True, timeout=120)
    tag = secrets.token_hex(4)
    vhost, user, password = f"celery-test-{tag}", f"celery-test-{tag}", secrets.token_hex(16)
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("add_user", user, password)
    _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    url = f"amqp://{user}:{password}@127.0.0.1:5672/{vhost}"
    previous = os.environ.get("CELERY_BROKER_URL")
    os.environ["CELERY_BROKER_URL"] = url  # the in-process app (Celery reads it at each use)
    try:
        yield url
    finally:
        if previous is None:
            os.environ.pop("CELERY_BROKER_URL", None)
        else:
            os.environ["CELERY_BROKER_URL"] = previous
        _rabbitmqctl("delete_vhost", vhost)
        _rabbitmqctl("delete_user", user)


@pytest.fixture(scope="session")
def app(broker_url):
    """The application, connected to the test vhost."""
    from celery_app import app as celery_app

    celery_app.conf.broker_url = broker_url
    yield celery_app
    celery_app.close()


@pytest.fixture(scope="session")
def fleet_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fleet")


@pytest.fixture(scope="session")
def workers(app, broker_url, fleet_root):
    """The running test fleet: node full name -> WorkerNode (calc@host-a, reports@host-a, celery@host-b)."""
    nodes = [
        WorkerNode(name, host, queues, host_dirs(fleet_root, host), broker_url)
        for host, host_nodes in FLEET.items()
        for name, queues in host_nodes.items()
    ]
    try:
        for node in nodes:
            node.start()
        wait_ready(app, nodes)
        yield {node.full_name: node for node in nodes}
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="session")
def late_node(app, broker_url, fleet_root):
    """A node (late@host-c), not started: the host-down test starts and stops it."""
    host, name, queues = LATE
    node = WorkerNode(name, host, queues, host_dirs(fleet_root, host), broker_url)
    yield node
    node.stop()


@pytest.fixture(scope="session")
def inventory(fleet_root) -> Path:
    """Inventory of exactly the running test fleet."""
    return write_inventory(fleet_root / "inventories" / "fleet", FLEET)


@pytest.fixture
def run_broadcast(broker_url):
    """Run `fleetctl broadcast` as the Makefile does; returns the CompletedProcess."""

    def run(*args: str, url: str | None = None) -> subprocess.CompletedProcess:
        env = {**_clean_env(), "CELERY_ENV_FILE": "/nonexistent/celery-env", "CELERY_BROKER_URL": url or broker_url}
        return subprocess.run([str(FLEETCTL), "broadcast", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)

    return run
