"""Helpers of the release tests: copies of the sample app at a given release, an inventory that deploys it."""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from support.deploy import write_inventory

SAMPLE_APP = Path(__file__).resolve().parents[1] / "release" / "sample-app"
# Fails only where the fleet installs releases (/opt/celery/releases exists): not on the controller,
# whose import check passes, but at every node's start on the hosts.
HOST_ONLY_FAILURE = ('\nimport os\nif os.path.isdir("/opt/celery/releases"):\n'
                     '    import shipyard_missing_on_hosts  # noqa\n')


def sample_app(parent: Path, release: str, fail_on_hosts: bool = False) -> Path:
    """parent/app: the sample app whose task returns release (and, fail_on_hosts, fails to import on the hosts)."""
    target = parent / "app"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(SAMPLE_APP, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    tasks = target / "shipyard" / "tasks.py"
    text = tasks.read_text().replace('RELEASE = "v1"', f'RELEASE = "{release}"')
    tasks.write_text(text + (HOST_ONLY_FAILURE if fail_on_hosts else ""))
    return target


def app_inventory(parent: Path, source_inventory: Path, app_dir: Path, **variables) -> Path:
    """An inventory of source_inventory's running hosts (same directory name: same secrets) deploying app_dir."""
    document = yaml.safe_load(source_inventory.read_text())
    workers = document["all"]["children"]["celery_workers"]
    workers["vars"] = {**(workers.get("vars") or {}), "celery_worker_app_source": str(app_dir),
                       "celery_worker_app": "shipyard.celery:app",
                       "celery_worker_app_smoke_task": {"name": "shipyard.tasks.quote", "args": [1200000]},
                       **variables}
    return write_inventory(parent, document, source=source_inventory)
