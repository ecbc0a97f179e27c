"""The pure parts of the rolling restart: batches, what a drain cancels, task counts, the verdict, its text."""
from __future__ import annotations

import pytest

from fleetctl import inventory as fleet_model
from fleetctl import restart
from fleetctl.cli.restart import describe_finding, outcome_json, render_text
from fleetctl.health.model import CeleryView, Finding, Probe

CALC = fleet_model.Node("calc", "w1", ("calc", "celery"), 2)
REPORTS = fleet_model.Node("reports", "w1", ("reports",), 1)
CELERY = fleet_model.Node("celery", "w2", ("celery",), 2)
W1 = fleet_model.Host("w1", "10.0.0.1", ("celery_workers",), (CALC, REPORTS))
W2 = fleet_model.Host("w2", "10.0.0.2", ("celery_workers", "celery_beat"), (CELERY,))
W3 = fleet_model.Host("w3", "10.0.0.3", ("celery_workers",), (fleet_model.Node("celery", "w3", ("celery",), 2),))
BROADCAST = ("broadcast",)


def _queues(node: fleet_model.Node) -> list[dict]:
    """An active_queues answer of a node consuming exactly its inventory queues."""
    own = [{"name": q, "exchange": {"name": q, "type": "direct"}} for q in node.queues]
    return own + [{"name": f"broadcast.{node.full_name}", "alias": "broadcast",
                   "exchange": {"name": "broadcast", "type": "fanout"}}]


def _judged(*args) -> dict[str, list[str]]:
    """restart.judge's findings in words, per host."""
    return {host: [describe_finding(f) for f in found] for host, found in restart.judge(*args).items()}


def _probe(host: str, nodes: tuple[str, ...], active: str = "active") -> Probe:
    return Probe(host, data={"units": {"celery.service": {"active": active, "sub": "exited"}},
                                    "workers": [{"pid": 100 + i, "node": n} for i, n in enumerate(nodes)],
                                    "pidfiles": []})


def test_hosts_go_serial_at_a_time_in_inventory_order():
    assert restart.batches([W1, W2, W3], 1) == [(W1,), (W2,), (W3,)]
    assert restart.batches([W1, W2, W3], 2) == [(W1, W2), (W3,)]
    with pytest.raises(ValueError):
        restart.batches([W1], 0)


def test_drain_cancels_what_each_node_consumes_and_falls_back_to_its_inventory_queues():
    answers = {"calc@w1": _queues(CALC) + [{"name": "extra", "exchange": {"name": "extra", "type": "direct"}}]}
    by_queue = restart.queues_to_cancel([CALC, REPORTS], answers, BROADCAST)
    assert by_queue == {
        "calc": ["calc@w1"], "celery": ["calc@w1"], "broadcast.calc@w1": ["calc@w1"], "extra": ["calc@w1"],
        "reports": ["reports@w1"], "broadcast.reports@w1": ["reports@w1"],  # no answer: the inventory's names
    }


def test_shared_queues_are_cancelled_once_for_all_their_nodes():
    node = fleet_model.Node("calc", "w2", ("calc", "celery"), 2)
    by_queue = restart.queues_to_cancel([CALC, node], {}, BROADCAST)
    assert by_queue["celery"] == ["calc@w1", "calc@w2"]


def test_tasks_are_counted_per_node_over_active_and_reserved_for_nodes_that_answered_both():
    active = {"calc@w1": [{"id": "a"}], "reports@w1": []}
    reserved = {"calc@w1": [{"id": "b"}, {"id": "c"}], "reports@w1": [], "late@w1": [{"id": "d"}]}
    assert restart.count_tasks(active, reserved) == {"calc@w1": 3, "reports@w1": 0}
    assert restart.count_tasks(None, None) == {}


def test_restarted_hosts_are_healthy_when_units_nodes_and_queues_are_right():
    view = CeleryView(pings={n.full_name: {"ok": "pong"} for n in (CALC, REPORTS)},
                             queues={n.full_name: _queues(n) for n in (CALC, REPORTS)})
    probes = {"w1": _probe("w1", ("calc@w1", "reports@w1"))}
    assert _judged([CALC, REPORTS], [W1], probes, view, BROADCAST) == {}


def test_a_silent_node_an_inactive_unit_and_queue_drift_are_named():
    view = CeleryView(pings={"calc@w1": {"ok": "pong"}}, queues={"calc@w1": _queues(CALC)[1:]})
    probes = {"w1": _probe("w1", ("calc@w1",), active="inactive")}
    problems = _judged([CALC, REPORTS], [W1], probes, view, BROADCAST)
    assert problems["w1"][0] == "celery.service inactive (exited)"
    assert "calc@w1: queue drift: missing calc" in problems["w1"]
    assert any(p.startswith("reports@w1: no answer to ping") for p in problems["w1"])


def test_a_node_running_twice_after_the_restart_is_not_healthy():
    view = CeleryView(pings={"celery@w2": {"ok": "pong"}}, queues={"celery@w2": _queues(CELERY)})
    probes = {"w2": _probe("w2", ("celery@w2", "celery@w2"))}
    assert "2 worker processes named celery@w2" in _judged([CELERY], [W2], probes, view, BROADCAST)["w2"][0]


def test_text_shows_each_host_and_where_the_run_stopped():
    outcome = restart.Outcome("inv", 1, (
        restart.HostRestart("w1", ("calc@w1",), restart.OK, drain_seconds=0.2, restart_seconds=3.1,
                            verify_seconds=2.0),
        restart.HostRestart("w2", ("celery@w2",), restart.FAIL,
                            (Finding("FAIL", "node_silent", {"node": "celery@w2", "timeout": 1, "pids": []}),)),
        restart.HostRestart("w3", ("celery@w3",), restart.SKIPPED, (Finding("SKIPPED", "not_reached"),)),
    ), elapsed=9.0)
    lines = render_text(outcome).splitlines()
    assert lines[1].split()[:2] == ["w1", "OK"] and lines[1].endswith("1 node(s) back: calc@w1")
    assert "celery@w2: no answer to ping within 1 s" in lines[2]
    assert lines[3].split()[:2] == ["w3", "SKIPPED"]
    assert lines[-1] == "STOPPED at w2: 1 of 3 host(s) restarted and healthy, 9.0 s"
    data = outcome_json(outcome)
    assert data["ok"] is False and data["stopped_at"] == ["w2"] and data["hosts"][0]["restart_seconds"] == 3.1


def test_record_ledger_is_a_plain_file_name_under_the_state_directory(tmp_path):
    from celery_app.tasks.examples import append_record, record_path

    path = record_path(tmp_path, "restart-1")
    assert path == tmp_path / "records" / "restart-1.log"
    for bad in ("../etc/passwd", "a/b", "", ".hidden", "a..b"):
        with pytest.raises(ValueError):
            record_path(tmp_path, bad)
    append_record(path, "id-1 calc@w1")
    append_record(path, "id-2 calc@w1")
    assert path.read_text() == "id-1 calc@w1\nid-2 calc@w1\n"
