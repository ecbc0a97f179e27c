"""The worker hosts' textfile metrics (celery_app.metrics): what they say, and how they are written."""
from __future__ import annotations

import os

from celery_app import metrics

NODES = ["calc@worker1", "reports@worker1"]
OPTS = "-Q:calc calc,celery,broadcast -c:calc 2 -Q:reports reports,broadcast -c:reports 1 --time-limit=300"


def _samples(text: str) -> dict[str, str]:
    return dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_expected_queues_are_each_nodes_q_option():
    assert metrics.expected_queues(NODES, OPTS) == {"calc@worker1": {"calc", "celery", "broadcast"},
                                                    "reports@worker1": {"reports", "broadcast"}}


def test_a_node_that_did_not_answer_is_down_and_one_on_other_queues_drifts():
    expected = metrics.expected_queues(NODES, OPTS)
    text = metrics.render(expected, {"calc@worker1": {"calc", "broadcast"}}, 1700000000.5, "v2", 1700000010.0)
    samples = _samples(text)
    assert samples['celery_fleet_node_up{node="calc@worker1"}'] == "1"
    assert samples['celery_fleet_node_up{node="reports@worker1"}'] == "0"
    assert samples['celery_fleet_node_queue_drift{node="calc@worker1"}'] == "1"  # celery is missing
    assert 'celery_fleet_node_queue_drift{node="reports@worker1"}' not in samples  # not known when down
    assert samples["celery_fleet_broker_reachable"] == "1"
    assert samples["celery_fleet_heartbeat_timestamp_seconds"] == "1700000000.500"
    assert samples['celery_fleet_release_info{release="v2"}'] == "1"


def test_an_unreachable_broker_puts_every_node_down_and_says_so():
    text = metrics.render(metrics.expected_queues(NODES, OPTS), None, None, None, 1.0)
    samples = _samples(text)
    assert [samples[f'celery_fleet_node_up{{node="{n}"}}'] for n in NODES] == ["0", "0"]
    assert samples["celery_fleet_broker_reachable"] == "0"
    assert not any(k.startswith(("celery_fleet_heartbeat", "celery_fleet_release")) for k in samples)


def test_label_values_are_escaped():
    text = metrics.render({'odd"node\\@h': set()}, {}, None, 'r"1', 1.0)
    assert 'celery_fleet_node_up{node="odd\\"node\\\\@h"} 0' in text
    assert 'celery_fleet_release_info{release="r\\"1"} 1' in text


def test_the_file_is_replaced_whole_and_readable_by_node_exporter(tmp_path):
    out = tmp_path / "celery_fleet.prom"
    out.write_text("old\n")
    metrics.write_atomically(out, "new\n")
    assert out.read_text() == "new\n" and os.stat(out).st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["celery_fleet.prom"]
