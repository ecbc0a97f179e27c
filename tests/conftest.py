"""Shared fixtures: sandbox fleets brought up per test module, and one deployed fleet per session.

Every test belongs to one tier, marked by the top directory of its file under tests/ unless it is
marked already: unit (tests/unit), broker (tests/app: a RabbitMQ on loopback), sandbox (the others).
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import pytest

from support.fleet import SANDBOX_INVENTORY, Fleet, make

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "broker", "sandbox")
DIRECTORY_TIERS = {"unit": "unit", "app": "broker"}  # any other directory under tests/: sandbox


def _keep() -> bool:
    return os.environ.get("KEEP_SANDBOX") == "1"


def _tier(path: Path) -> str:
    """The tier of a test file by its top directory under tests/."""
    path = path.resolve()
    parts = path.relative_to(TESTS).parts if path.is_relative_to(TESTS) else ()
    return DIRECTORY_TIERS.get(parts[0], "sandbox") if len(parts) > 1 else "sandbox"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test that carries no tier marker with its directory's tier.

    A module none of whose tests has a tier marker gets it on the module itself (its tests inherit it,
    and its module-scoped fixtures see it); in a module where some have one, the others get it one by one.
    """
    unmarked: dict[pytest.Module | None, list[pytest.Item]] = defaultdict(list)
    counts: dict[pytest.Module | None, int] = defaultdict(int)
    for item in items:
        module = item.getparent(pytest.Module)
        counts[module] += 1
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            unmarked[module].append(item)
    for module, module_items in unmarked.items():
        tier = _tier(module_items[0].path)
        if module is not None and len(module_items) == counts[module]:
            module.add_marker(tier)
        else:
            for item in module_items:
                item.add_marker(tier)


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
    """Fleet tests talk to the sandbox: CELERY_* variables the broker tests set for loopback stay out."""
    if request.node.get_closest_marker("broker"):  # the module: pytest_collection_modifyitems marks it
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("CELERY_")]:
            patch.delenv(name)
        yield
