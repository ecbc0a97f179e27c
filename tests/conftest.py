"""Shared fixtures: sandbox fleets brought up per test module, and one deployed fleet per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fleet_testing import SANDBOX_INVENTORY, Fleet, make


def _keep() -> bool:
    return os.environ.get("KEEP_SANDBOX") == "1"


@pytest.fixture(scope="module")
def sandbox_fleet(request):
    """Bring the module's SANDBOX_INVENTORY up for the module, and down afterwards."""
    inventory = Path(getattr(request.module, "SANDBOX_INVENTORY", SANDBOX_INVENTORY))
    make("sandbox-up", f"INVENTORY={inventory}")
    yield Fleet(inventory=inventory)
    if not _keep():
        make("sandbox-down", f"INVENTORY={inventory}")


@pytest.fixture(scope="session")
def deployed_fleet():
    """The default sandbox fleet, brought up and deployed once per session (KEEP_SANDBOX=1 keeps it)."""
    proc = make("deploy")
    yield Fleet(inventory=SANDBOX_INVENTORY, deploy_output=proc.stdout)
    if not _keep():
        make("sandbox-down", f"INVENTORY={SANDBOX_INVENTORY}")


@pytest.fixture(scope="module", autouse=True)
def _no_loopback_celery_settings(request):
    """Fleet tests talk to the sandbox: CELERY_* variables the app tests set for loopback stay out."""
    if Path(request.path).parent.name == "app":
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("CELERY_")]:
            patch.delenv(name)
        yield
