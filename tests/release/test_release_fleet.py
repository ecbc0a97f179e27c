"""The operator's own application, deployed as releases that roll out host by host and roll back (issue 17).

Inventory tests/fleets/release/: rl-broker, rl-w1 (the canary) and rl-w2 (beat), each worker
host with the nodes celery (queue celery: the heartbeat) and ship (the sample app's queue shipping).
The sample app (tests/release/sample-app, package shipyard, dependency humanize) is copied per release
into a directory of the module, and the inventory the tests deploy (written beside it, same directory
name: same secrets) points celery_worker_app_source there. The tests run in order on one fleet.
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import threading
import time

import pytest

from support.deploy import ROOT, changed_tasks, deploy, host, recap
from support.fleet import FLEETS, RELAXED
from support.release import app_inventory, sample_app

pytestmark = pytest.mark.fleet("release")
SANDBOX_INVENTORY = FLEETS["release"].inventory
W1, W2 = "rl-w1", "rl-w2"
QUOTE = "shipyard.tasks.quote"
SEND = ("import json, sys\nfrom celery_app.loader import app\n"
        "results = [app.send_task(%r, args=[1200000]) for _ in range(int(sys.argv[1]))]\n"
        "print(json.dumps([r.get(timeout=60) for r in results]))\n" % QUOTE)


def _ssh(name: str, command: str, check: bool = True):
    """command run as root on a host of the fleet (testinfra, through Ansible): its result."""
    result = host(name, SANDBOX_INVENTORY).run(command)
    if check and result.rc != 0:
        raise AssertionError(f"{name}: {command[:80]}... exit {result.rc}: {result.stderr[-2000:]}")
    return result


def _current(host: str) -> str:
    return _ssh(host, "readlink /opt/celery/current || true").stdout.strip().rsplit("/", 1)[-1]


def _quotes(host: str, count: int) -> list[dict]:
    """count quote tasks sent from host (the app's own client: the fleet's loader and env file), their results."""
    command = ("cd /tmp && set -a && . /etc/conf.d/celery && set +a && exec timeout 120 "
               f"/opt/celery/venv/bin/python -c {shlex.quote(SEND)} {count}")
    return json.loads(_ssh(host, command).stdout)


def _releases_seen(host: str, wanted: set[str], tries: int = 6) -> set[tuple[str, str]]:
    """(host, release) pairs of quote results until both worker hosts answered (or tries batches ran)."""
    seen: set[tuple[str, str]] = set()
    for _ in range(tries):
        seen |= {(r["host"], r["release"]) for r in _quotes(host, 8)}
        if {h for h, _ in seen} >= wanted:
            break
    return seen


@pytest.fixture(scope="module")
def work(sandbox_fleet, tmp_path_factory):
    """The module's directory: the sample app (rewritten per release) and the inventory that deploys it."""
    base = tmp_path_factory.mktemp("release")
    # Release ids v2, v3 name this run's content: builds of earlier runs (other code) are dropped.
    shutil.rmtree(ROOT / ".cache" / "releases" / SANDBOX_INVENTORY.parent.name, ignore_errors=True)
    app = sample_app(base, "v1")
    return {"base": base, "app": app, "inventory": app_inventory(base / "inventory", SANDBOX_INVENTORY, app),
            "fleet": sandbox_fleet}


def test_check_mode_on_a_fresh_fleet_exits_zero_and_changes_nothing(work):
    fresh = not _ssh(W1, "test -e /opt/celery/current", check=False).rc == 0
    proc = deploy(work["inventory"], check=True)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert f"{W1} PLANNED" in proc.stdout or not fresh, proc.stdout[-3000:]
    dry = work["fleet"].make("release", "CHECK=1", inventory=work["inventory"])
    assert dry.returncode == 0, dry.stdout[-3000:]
    assert "DRY RUN" in dry.stdout
    if fresh:
        assert _ssh(W1, "test -e /opt/celery/current", check=False).rc != 0


@pytest.fixture(scope="module")
def v1(work):
    """The fleet deployed with release v1 of the sample app (a cold deploy of fresh hosts): its release id."""
    proc = deploy(work["inventory"])
    assert proc.returncode == 0, proc.stdout[-6000:]
    release = _current(W1)
    assert release.startswith("shipyard-1.0.0-") and _current(W2) == release
    return release


def test_app_task_runs_on_the_node_of_its_queue_and_returns_its_result(v1):
    results = _quotes(W1, 4)
    assert {r["release"] for r in results} == {"v1"}
    assert {r["words"] for r in results} == {"1.2 million"}  # humanize, the app's own dependency
    assert {r["host"] for r in results} <= {W1, W2}
    queues = _ssh(W1, "cd /tmp && . /etc/conf.d/celery && $CELERY_BIN -A $CELERY_APP inspect active_queues --json "
                      f"--timeout 5 -d ship@{W1},celery@{W1}").stdout
    consumed = {node: {q.get("alias") or q["name"] for q in qs} for node, qs in json.loads(queues).items()}
    assert consumed == {f"ship@{W1}": {"shipping", "broadcast"}, f"celery@{W1}": {"celery", "broadcast"}}


def test_broadcast_still_answers_from_every_node(work, v1):
    proc = work["fleet"].make("broadcast", "TASK=host_report", inventory=work["inventory"])
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "4/4 nodes answered" in proc.stdout, proc.stdout[-3000:]


def _health_rows() -> tuple[int, dict[str, dict]]:
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "fleetctl"), "health", "--inventory", str(SANDBOX_INVENTORY),
                           "--format", "json", *RELAXED], cwd=ROOT, text=True, capture_output=True, timeout=120)
    return proc.returncode, {row["name"]: row for row in json.loads(proc.stdout)["rows"]}


def test_health_is_ok_with_the_heartbeat(v1):
    deadline = time.monotonic() + 150  # beat's first heartbeat comes within a period (30 s) of its start
    while True:
        code, rows = _health_rows()
        beat = [f["code"] for f in rows[W2]["findings"]]
        if (code == 0 and "heartbeat" in beat) or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert code == 0 and "heartbeat" in beat, {name: row["reasons"] for name, row in rows.items()}
    for name in (W1, W2):  # each host's release, shown
        assert {"status": "OK", "code": "release", "params": {"release": v1}} in rows[name]["findings"], rows[name]


def test_release_v2_rolls_out_losing_no_task_of_a_stream(work, v1):
    sample_app(work["base"], "v2")
    from fleetctl.inventory import load_fleet  # the controller publishes as any client would
    from fleetctl.remote.control import control_app

    app = control_app(load_fleet(SANDBOX_INVENTORY).broker_url, 5, "release-stream")
    app.conf.result_backend = "rpc://"
    sent, stop = [], threading.Event()

    def stream():
        while not stop.is_set():
            sent.append(app.send_task(QUOTE, args=[len(sent)], queue="shipping"))
            time.sleep(0.1)

    publisher = threading.Thread(target=stream, daemon=True)
    publisher.start()
    try:
        proc = work["fleet"].make("release", "VERSION=v2", inventory=work["inventory"])
    finally:
        stop.set()
        publisher.join(30)
    assert proc.returncode == 0, proc.stdout[-5000:]
    results = [r.get(timeout=120) for r in sent]
    assert len(results) == len(sent) > 10
    assert _current(W1) == _current(W2) == "v2"
    assert _releases_seen(W2, {W1, W2}) == {(W1, "v2"), (W2, "v2")}


def test_release_that_fails_at_import_on_the_hosts_stops_at_the_canary(work, v1):
    sample_app(work["base"], "v3", fail_on_hosts=True)
    proc = work["fleet"].make("release", "VERSION=v3", inventory=work["inventory"])
    assert proc.returncode != 0
    assert f"STOPPED at {W1}" in proc.stdout, proc.stdout[-4000:]
    assert _current(W1) == "v2" and _current(W2) == "v2"
    assert _ssh(W2, "test -e /opt/celery/releases/v3", check=False).rc != 0  # never saw v3
    assert {r["release"] for r in _quotes(W1, 4)} == {"v2"}
    ping = _ssh(W1, "cd /tmp && . /etc/conf.d/celery && $CELERY_BIN -A $CELERY_APP inspect ping --json --timeout 3 "
                    f"-d ship@{W1},celery@{W1}").stdout
    assert set(json.loads(ping)) == {f"ship@{W1}", f"celery@{W1}"}


def test_rollback_returns_every_host_to_the_first_release(work, v1):
    proc = work["fleet"].make("rollback", inventory=work["inventory"])
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert _current(W1) == _current(W2) == v1
    assert _releases_seen(W1, {W1, W2}) == {(W1, "v1"), (W2, "v1")}


def test_a_second_release_of_an_unchanged_app_changes_nothing(work, v1, tmp_path):
    sample_app(work["base"], "v1")
    pids = _ssh(W1, "cat /run/celery/*.pid").stdout
    proc = work["fleet"].make("release", inventory=work["inventory"])
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "0 host(s) switched" in proc.stdout, proc.stdout[-3000:]
    assert _ssh(W1, "cat /run/celery/*.pid").stdout == pids
    again = deploy(work["inventory"])
    (tmp_path / "deploy.log").write_text(again.stdout)  # the whole run, for a failure's reader
    assert again.returncode == 0, again.stdout[-4000:]
    assert all(counts["changed"] == 0 for counts in recap(again.stdout).values()), "\n".join(
        changed_tasks(again.stdout))


def _host_states() -> dict[str, tuple[str, str]]:
    return {name: (_current(name), _ssh(name, "cat /run/celery/*.pid").stdout) for name in (W1, W2)}


def test_a_project_that_does_not_build_stops_the_deploy_before_any_host_changes(work, v1):
    app = sample_app(work["base"], "v1")
    (app / "pyproject.toml").write_text("[project\nname = 'broken'\n")
    before = _host_states()
    proc = deploy(work["inventory"])
    assert proc.returncode != 0
    assert "the project does not build" in proc.stdout, proc.stdout[-4000:]
    assert "Broker, result backend and workers are installed" not in proc.stdout
    assert _host_states() == before


def test_an_app_that_does_not_import_stops_the_deploy_before_any_host_changes(work, v1):
    app = sample_app(work["base"], "v1")
    inventory = app_inventory(work["base"] / "missing-app", SANDBOX_INVENTORY, app,
                              celery_worker_app="shipyard.missing:app")
    before = _host_states()
    proc = deploy(inventory)
    assert proc.returncode != 0
    assert "celery_worker_app 'shipyard.missing:app' does not import in the built release" in proc.stdout, \
        proc.stdout[-4000:]
    assert _host_states() == before
