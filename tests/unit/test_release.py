"""The release's pure parts: ids, host state, pruning, platform tags, the fleet wheel, the inventory's app, the CLI."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from fleetctl.cli import main
from fleetctl.cli.common import Output
from fleetctl.release import (
    AppConfig,
    HostState,
    ReleaseError,
    app_config,
    check_release_id,
    parse_state,
    pins_of,
    platform_tags,
    prunable,
    wheel_digest,
    write_fleet_wheel,
)
from fleetctl.release import (
    HostRelease as H,
)
from fleetctl.release import (
    Outcome as O,
)


@pytest.mark.parametrize("value", ["v1", "shop-1.2.0-abc", "2026.12.01_a"])
def test_release_ids_of_plain_characters_are_accepted(value):
    assert check_release_id(value) == value


@pytest.mark.parametrize("value", ["", "../x", ".hidden", "a b", "v1;rm", "a/b", "x" * 101])
def test_release_ids_with_other_characters_are_refused_naming_the_variable(value):
    with pytest.raises(ReleaseError, match="^TO: release id"):
        check_release_id(value, "TO")


def test_host_state_is_read_from_the_state_script_lines():
    state = parse_state("current releases/v2\nprevious releases/v1\nrelease v1\nrelease v2\n"
                        "python 3.11\nmachine x86_64\nlibc 2.36\n")
    assert state == HostState("v2", "v1", ("v1", "v2"), "3.11", "x86_64", "2.36")
    assert parse_state("current \nprevious \npython 3.13\n").current is None


def test_pruning_keeps_the_newest_and_never_the_current_or_previous_release():
    state = HostState(current="r2", previous="r1", releases=("r1", "r2", "r3", "r4", "r5", "r6"))
    assert prunable(state, 3) == ["r3", "r4", "r5"]
    assert prunable(state, 2) == ["r3", "r4", "r5", "r6"]
    assert prunable(HostState(current="r1", releases=("r1",)), 2) == []


def test_platform_tags_cover_the_hosts_glibc_down_to_manylinux2014():
    tags = platform_tags("x86_64", "2.36")
    assert tags[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in tags
    assert tags[-1] == "linux_x86_64" and "manylinux2014_x86_64" in tags


def test_pins_are_read_from_wheel_names():
    assert pins_of(["celery-5.7.0-py3-none-any.whl", "psutil-7.2.2-cp36-abi3-manylinux_2_17_x86_64.whl"]) == (
        "celery==5.7.0", "psutil==7.2.2")


def test_the_fleet_wheel_holds_the_loader_and_is_reproducible(tmp_path):
    first = write_fleet_wheel(tmp_path / "a") if (tmp_path / "a").mkdir() is None else None
    second = write_fleet_wheel(tmp_path / "b") if (tmp_path / "b").mkdir() is None else None
    assert first.name == second.name and wheel_digest(first) == wheel_digest(second)
    names = zipfile.ZipFile(first).namelist()
    assert "celery_app/loader.py" in names and "celery_app/tasks/maintenance.py" in names
    assert not [name for name in names if "__pycache__" in name]


def test_the_inventorys_app_is_read_from_the_first_worker_host(tmp_path):
    (tmp_path / "app").mkdir()
    hostvars = {"w1": {"celery_worker_app_source": "app", "celery_worker_app": "shop.celery:app",
                       "celery_worker_app_smoke_task": {"name": "shop.ping", "args": [1]}}}
    config = app_config(hostvars, ["w1"], tmp_path / "hosts.yml")
    assert config == AppConfig(source=tmp_path / "app", app="shop.celery:app", smoke_name="shop.ping", smoke_args=(1,))
    assert app_config({"w1": {}}, ["w1"], tmp_path / "hosts.yml") is None


@pytest.mark.parametrize("variables, words", [
    ({"celery_worker_app_source": "missing", "celery_worker_app": "shop"}, "w1: celery_worker_app_source"),
    ({"celery_worker_app_source": "app", "celery_worker_app": "shop; rm"}, "w1: celery_worker_app "),
    ({"celery_worker_app_source": "app", "celery_worker_app": "shop", "celery_worker_app_keep_releases": 1},
     "w1: celery_worker_app_keep_releases"),
])
def test_bad_app_variables_are_refused_naming_host_and_variable(tmp_path, variables, words):
    (tmp_path / "app").mkdir()
    with pytest.raises(ReleaseError, match=words):
        app_config({"w1": variables}, ["w1"], tmp_path / "hosts.yml")


def test_an_outcome_fails_at_the_host_whose_gate_failed():
    outcome = O("v3", "release", (H("w1", "FAIL", "v2", "v2", "nodes_unhealthy"), H("w2", "SKIPPED", "v2", "v2")))
    assert not outcome.ok and outcome.stopped_at == ("w1",) and outcome.changed == ()


@pytest.mark.parametrize("verb", ["release", "rollback"])
def test_release_verbs_name_their_exit_codes(verb, capsys):
    with pytest.raises(SystemExit) as done:
        main([verb, "--help"], Output(io.StringIO(), io.StringIO()))
    text = capsys.readouterr().out
    assert done.value.code == 0 and "exit status" in text and "canary" in text


def test_a_bad_release_id_is_a_usage_error_before_anything_is_read():
    assert Path("/nonexistent-inventory").exists() is False
    with pytest.raises(ReleaseError):
        check_release_id("v 1", "VERSION")


def test_health_shows_each_hosts_release_and_warns_on_drift_only_when_no_rollout_runs():
    from fleetctl.health.render import describe
    from fleetctl.health.verdict import release_findings
    from fleetctl.inventory import Host

    w1 = Host("w1", "10.0.0.1", ("celery_workers",))
    assert [(f.status, f.code) for f in release_findings(w1, {"w1": "v2", "w2": "v2"})] == [("OK", "release")]
    drift = release_findings(w1, {"w1": "v2", "w2": "v1"})
    assert [(f.status, f.code) for f in drift] == [("WARN", "release_drift")]
    assert describe(drift[0]) == "release v2 while w2 runs v1 (no rollout running)"
    assert [f.code for f in release_findings(w1, {"w1": "v2", "w2": "v1"}, rolling=True)] == ["release"]
    assert release_findings(w1, {}) == []  # the bundled app: no release


def test_a_release_is_its_content_and_its_app_entry_point(tmp_path):
    from fleetctl.release import source_digest

    wheel = write_fleet_wheel(tmp_path)
    shop = AppConfig(source=tmp_path, app="shop.celery:app")
    assert source_digest(wheel, wheel, shop) == source_digest(wheel, wheel, AppConfig(source=tmp_path,
                                                                                      app="shop.celery:app"))
    assert source_digest(wheel, wheel, shop) != source_digest(wheel, wheel, AppConfig(source=tmp_path, app="shop"))
