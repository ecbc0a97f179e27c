"""Shared fixtures and hooks: the tiers, and the fleets (tests/support/fleet.py), each up once per session.

Every test belongs to one tier, marked by the top directory of its file under tests/ unless it is
marked already: unit (tests/unit), preflight (tests/preflight: no host reached), broker (tests/app: a
RabbitMQ on loopback), sandbox (the others). A sandbox test names the fleets it runs on: the marker
fleet("name") (on its module, or on the test), or the fixture deployed_fleet (the default fleet).
Tests run tier by tier (fast first) and, in the sandbox tier, fleet by fleet: each fleet is brought up
(and deployed) when its first test needs it and down after its last one. `--fleet NAME` runs one
fleet's tests alone; a failing test's report names its fleets and hosts and leaves their logs under
the test's output directory.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

from support.fleet import FLEETS, FleetPool, safe_name

TESTS = Path(__file__).resolve().parent
LANES_FILE = TESTS.parent / ".pytest_cache" / "fleet-lanes.json"  # nodeid -> lane, for make test's two lanes
TIERS = ("unit", "preflight", "broker", "sandbox")
DIRECTORY_TIERS = {"unit": "unit", "preflight": "preflight", "app": "broker"}  # any other: sandbox


def _keep() -> bool:
    return os.environ.get("KEEP_SANDBOX") == "1"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fleet", action="append", default=[], metavar="NAME",
                     help=f"run only the tests of this fleet (repeatable): {', '.join(FLEETS)}")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_POOL] = FleetPool(keep=_keep())
    unknown = sorted(set(config.getoption("--fleet")) - set(FLEETS))
    if unknown:
        raise pytest.UsageError(f"--fleet {' '.join(map(repr, unknown))}: no such fleet "
                                f"(make test-fleet FLEET=name; fleets: {', '.join(FLEETS)})")


_POOL = pytest.StashKey[FleetPool]()
_LAST = pytest.StashKey[dict[str, pytest.Item]]()  # fleet -> the last test that uses it


def _tier(path: Path) -> str:
    """The tier of a test file by its top directory under tests/."""
    path = path.resolve()
    parts = path.relative_to(TESTS).parts if path.is_relative_to(TESTS) else ()
    return DIRECTORY_TIERS.get(parts[0], "sandbox") if len(parts) > 1 else "sandbox"


def fleets_of(item: pytest.Item) -> list[str]:
    """The fleets a test runs on: its fleet markers, and the default fleet when it uses deployed_fleet."""
    names = [m.args[0] for m in item.iter_markers("fleet")]
    if "deployed_fleet" in getattr(item, "fixturenames", ()):
        names.append("sandbox")
    return list(dict.fromkeys(names))


def _mark_tiers(items: list[pytest.Item]) -> None:
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


def _order(items: list[pytest.Item]) -> list[pytest.Item]:
    """Tier by tier (fast first); within the sandbox tier, module by module grouped by fleet (a module's first
    fleet), each group where its first module stood, and a fleet a module uses beside its own right after
    that module's group (it is up then anyway); within a module, the order of the file."""
    rank = {tier: index for index, tier in enumerate(TIERS)}
    modules: dict[pytest.Module | None, list[str]] = {}
    for item in items:
        names = modules.setdefault(item.getparent(pytest.Module), [])
        names.extend(name for name in fleets_of(item) if name not in names)
    groups: dict[str, float] = {}
    for names in modules.values():
        if names:
            groups.setdefault(names[0], len(groups))
    for names in modules.values():
        for name in names[1:]:
            groups[name] = min(groups.get(name, len(groups)), groups[names[0]] + 0.5)
    first = {module: index for index, module in enumerate(modules)}

    def key(item: pytest.Item) -> tuple:
        module = item.getparent(pytest.Module)
        tier = next((t for t in TIERS if item.get_closest_marker(t)), "sandbox")
        names = modules[module]
        return rank[tier], groups[names[0]] if names else -1, first[module]

    return sorted(items, key=key)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's, which reads the lanes' xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _mark_tiers(items)
    wanted = set(config.getoption("--fleet"))
    if wanted:
        selected = [item for item in items if wanted & set(fleets_of(item))]
        config.hook.pytest_deselected(items=[item for item in items if item not in selected])
        items[:] = selected
    items[:] = _order(items)
    config.stash[_LAST] = {name: item for item in items for name in fleets_of(item)}
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the controller's LaneScheduling reads the lanes
        lanes = json.dumps({item.nodeid: _lane(item) for item in items})
        LANES_FILE.parent.mkdir(parents=True, exist_ok=True)
        partial = LANES_FILE.with_suffix(f".{os.getpid()}")
        partial.write_text(lanes)
        partial.replace(LANES_FILE)


def _lane(item: pytest.Item) -> int:
    """The lane of a test: its module's fleet's (a module's tests stay together), 0 without a fleet."""
    names = [name for m in item.getparent(pytest.Module).iter_markers("fleet") for name in m.args[:1]]
    names = names or fleets_of(item)
    return FLEETS[names[0]].lane if names else 0


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """make test's lanes (pytest -n 2): each lane, in collection order, on one worker."""
    from xdist.scheduler import LoadScopeScheduling

    class LaneScheduling(LoadScopeScheduling):
        _lanes: dict[str, int] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._lanes is None:  # written by the workers when they collected (before they reported it)
                self._lanes = json.loads(LANES_FILE.read_text())
            return f"lane{self._lanes.get(nodeid, 0)}"

    return LaneScheduling(config, log)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    """After a fleet's last test (its module fixtures finalized with it), the fleet goes down."""
    try:
        return (yield)
    finally:
        pool = item.config.stash[_POOL]
        for name, last in item.config.stash[_LAST].items():
            if last is item:
                pool.down(name)


def pytest_sessionfinish(session: pytest.Session) -> None:
    pool = session.config.stash[_POOL]
    pool.close()  # whatever an interrupted or failed run left up
    if hasattr(session.config, "workeroutput"):  # a pytest-xdist worker: its fleets' lines go to the controller
        session.config.workeroutput["fleets_held"] = pool.held


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """pytest-xdist controller: the fleets a worker held, for the summary."""
    node.config.stash[_POOL].held.update(getattr(node, "workeroutput", {}).get("fleets_held", {}))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed test's report names its fleets and hosts; their logs go under the test's output directory."""
    report = yield
    pool = item.config.stash[_POOL]
    fleets = [pool.up[name] for name in fleets_of(item) if name in pool.up]
    if report.failed and fleets:
        tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
        base = tmp_path or item.config._tmp_path_factory.getbasetemp() / safe_name(item.nodeid)
        lines = []
        for fleet in fleets:
            try:
                lines.append(fleet.describe())
                written = fleet.collect_logs(Path(base) / "fleet-logs" / fleet.name)
                lines.append(f"  logs: {written[0].parent if written else 'none'}")
            except Exception as error:  # the report must not fail on a fleet that is gone
                lines.append(f"fleet {fleet.name}: not described ({error})")
        report.sections.append((f"fleets of this test ({call.when})", "\n".join(lines)))
    return report


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    """After the --durations table: one line per fleet held this session."""
    lines = config.stash[_POOL].summary()
    if lines:
        terminalreporter.write_sep("=", "fleets: boot, cold deploy and time held")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def fleet_pool(request) -> FleetPool:
    """The session's fleets (tests that use one next to their module's fleet get it from here)."""
    return request.config.stash[_POOL]


@pytest.fixture(scope="module")
def sandbox_fleet(request, fleet_pool):
    """The fleet the module's fleet marker names, up (and deployed where its spec says so)."""
    marker = request.node.get_closest_marker("fleet")
    assert marker, f"{request.node.nodeid}: a module that uses sandbox_fleet names its fleet: pytest.mark.fleet(...)"
    return fleet_pool.get(marker.args[0])


@pytest.fixture(scope="session")
def deployed_fleet(fleet_pool):
    """The default sandbox fleet, brought up and deployed once per session (KEEP_SANDBOX=1 keeps it)."""
    return fleet_pool.get("sandbox")


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
