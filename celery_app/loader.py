"""``celery -A celery_app.loader``: the operator's app (CELERY_FLEET_APP, the -A value) with the fleet's part attached.

The application needs no line of fleet code: ``celery_app.fleet.attach`` adds the fleet's queues,
routes, maintenance tasks, heartbeat and safety defaults (only where the app left Celery's default).
CELERY_FLEET_APP comes from the environment, else from /etc/conf.d/celery (CELERY_ENV_FILE).
"""
from __future__ import annotations

import importlib
import os

from celery.app.utils import find_app

from celery_app import fleet
from celery_app.settings import DEFAULT_ENV_FILE, read_env_file


def app_name(environ=None) -> str:
    """The -A value of the operator's app: CELERY_FLEET_APP of the environment, else of the env file."""
    environ = os.environ if environ is None else environ
    name = environ.get("CELERY_FLEET_APP", "").strip()
    if not name:
        name = read_env_file(environ.get("CELERY_ENV_FILE") or DEFAULT_ENV_FILE).get("CELERY_FLEET_APP", "").strip()
    if not name:
        raise RuntimeError("CELERY_FLEET_APP is not set (the environment or /etc/conf.d/celery): "
                           "which application should the fleet load?")
    return name


app = fleet.attach(find_app(app_name()))
for _module in fleet.TASK_MODULES:
    importlib.import_module(_module)
