"""Health without a fleet: verdicts, queue drift, thresholds, the table, JSON, the probe on this machine."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from celery.schedules import schedule

from fleetctl import inventory as fleet
from fleetctl.cli import main
from fleetctl.errors import EXIT_USAGE
from fleetctl.health import gather, model, render, verdict
from fleetctl.health.model import CeleryView, Probe, Report, Row, Thresholds
from fleetctl.remote import broker_metrics

ROOT = Path(__file__).resolve().parents[2]

FLEET = fleet.Fleet(
    hosts=(
        fleet.Host("mq", "10.0.0.4", ("rabbitmq",)),
        fleet.Host("w1", "10.0.0.2", ("celery_workers",), (
            fleet.Node("calc", "w1", ("calc", "celery"), 2), fleet.Node("reports", "w1", ("reports",), 1))),
        fleet.Host("w2", "10.0.0.3", ("celery_workers", "celery_beat"), (fleet.Node("celery", "w2", ("celery",), 2),)),
        fleet.Host("bystander", "10.0.0.9", ("ungrouped",)),
    ),
    beat_host="w2", broker_host="mq", broadcast_queues=("broadcast",),
)
LENIENT = Thresholds()


def _queue(name: str) -> dict:
    return {"name": name, "exchange": {"name": name, "type": "direct"}, "alias": None}


def _broadcast(name: str, node: str) -> dict:
    return {"name": f"{name}.{node}", "exchange": {"name": name, "type": "fanout"}, "alias": name}


def _probe(host: str, workers=(), units=("celery.service",), heartbeat_age=5.0, **metrics) -> Probe:
    data = {
        "units": {unit: {"load": "loaded", "active": "active", "sub": "running", "active_for": 600.0}
                  for unit in units},
        "heartbeat": {"age": heartbeat_age},
        "load_per_cpu": metrics.get("load", 0.2), "memory_percent": metrics.get("memory", 30.0),
        "disk_percent": {"/": metrics.get("disk", 40.0), "/var/log": 40.0},
        "workers": [{"pid": 100 + i, "node": node} for i, node in enumerate(workers)], "pidfiles": [],
    }
    return Probe(host, data=data)


def _healthy_probes() -> dict[str, Probe]:
    return {
        "mq": _probe("mq", units=("rabbitmq-server.service",), heartbeat_age=None),
        "w1": _probe("w1", workers=("calc@w1", "reports@w1"), heartbeat_age=40.0),
        "w2": _probe("w2", workers=("celery@w2",), units=("celery.service", "celerybeat.service")),
    }


def _healthy_view() -> CeleryView:
    queues = {node.full_name: [_queue(q) for q in node.queues] + [_broadcast("broadcast", node.full_name)]
              for node in FLEET.nodes}
    return CeleryView(pings={name: {"ok": "pong"} for name in FLEET.node_names}, queues=queues, timeout=2)


def _rows(rows) -> dict[str, Row]:
    return {row.name: row for row in rows}


# Thresholds, drift, beat period, heartbeat.

@pytest.mark.parametrize("value, status", [(None, "OK"), (79.9, "OK"), (80, "WARN"), (89.9, "WARN"), (90, "FAIL")])
def test_metric_grade_turns_warn_then_fail_at_its_thresholds(value, status):
    assert verdict.grade(value, 80, 90) == status


def test_broadcast_queue_of_a_node_counts_under_its_alias():
    queues = [_queue("calc"), _broadcast("broadcast", "calc@w1"),
              {"name": "urgent.calc@w1", "exchange": {"name": "urgent", "type": "fanout"}}]
    assert verdict.consumed_queue_names(queues) == ("calc", "broadcast", "urgent")


def test_queue_drift_names_missing_and_extra_queues():
    missing, extra = verdict.queue_drift(["calc", "celery", "broadcast"], ["celery", "broadcast", "reports"])
    assert (missing, extra) == (("calc",), ("reports",))
    drift = model.Finding("FAIL", "queue_drift", {"missing": missing, "extra": extra})
    assert render.describe(drift) == "queue drift: missing calc; extra reports"


def test_queue_options_are_shown_and_a_node_declaring_them_otherwise_fails():
    options = (("feeds", (("exchange", "feeds"), ("exchange_type", "topic"), ("routing_key", "feed.#"))),
               ("urgent", (("max_priority", 10),)))
    node = fleet.Node("lane", "w1", ("feeds", "urgent"), 1, options)
    feeds = {"name": "feeds", "exchange": {"name": "feeds", "type": "topic"}, "routing_key": "feed.#"}
    urgent = {**_queue("urgent"), "routing_key": "urgent", "queue_arguments": {"x-max-priority": 10}}
    view = CeleryView(queues={"lane@w1": [feeds, urgent, _broadcast("broadcast", "lane@w1")]})
    [shown] = verdict._queue_findings(node, view, ("broadcast",))
    assert render.describe(shown) == "queues feeds (topic feeds, feed.#), urgent (max_priority 10), broadcast"

    view = CeleryView(queues={"lane@w1": [feeds, {**urgent, "queue_arguments": {}}]})
    drift, _ = verdict._queue_findings(node, view, ())
    assert drift.status == "FAIL" and drift.params == {"queue": "urgent", "differs": {"max_priority": [10, None]}}
    assert render.describe(drift) == "queue urgent declared otherwise than the inventory: max_priority 10 wanted, " \
                                     "None declared"


@pytest.mark.parametrize("depth, status, codes", [
    ({"ready": 0, "consumers": 2}, "OK", ()),
    ({"ready": 999, "consumers": 1}, "OK", ()),
    ({"ready": 1000, "consumers": 1}, "WARN", ("queue_backlog",)),
    ({"ready": 10000, "consumers": 1}, "FAIL", ("queue_backlog",)),
    ({"ready": 500, "consumers": 0}, "FAIL", ("queue_unconsumed",)),
    ({"ready": 0, "consumers": 0}, "OK", ()),
    (None, "WARN", ("queue_undeclared",)),
])
def test_queue_rows_judge_backlog_and_a_queue_nobody_consumes(depth, status, codes):
    view = CeleryView(depths={"calc": depth})
    row = verdict.queue_row("calc", view, Thresholds())
    assert (row.kind, row.status, row.codes) == ("queue", status, codes)


def test_unacknowledged_messages_show_beside_ready_ones_where_the_broker_metrics_tell():
    view = CeleryView(depths={"calc": {"ready": 4, "consumers": 2}, "celery": {"ready": 0, "consumers": 1}})
    calc = verdict.queue_row("calc", view, Thresholds(), {"calc": 2})
    celery = verdict.queue_row("celery", view, Thresholds(), {"calc": 2})
    assert render.facts(calc) == ("4 messages ready, 2 unacknowledged, 2 consumers",)
    assert render.facts(celery) == ("0 messages ready, 1 consumer",)


def test_every_inventory_queue_gets_a_row_after_the_hosts_and_the_table_names_it():
    depths = {"calc": {"ready": 500, "consumers": 0}, "celery": {"ready": 3, "consumers": 2}}
    view = CeleryView(pings=_healthy_view().pings, queues=_healthy_view().queues, depths=depths)
    report = Report("inv", verdict.evaluate(FLEET, _healthy_probes(), view, LENIENT, 30.0))
    queues = [row for row in report.rows if row.kind == "queue"]
    assert [(row.name, row.status) for row in queues] == [("calc", "FAIL"), ("celery", "OK"), ("reports", "WARN")]
    assert report.rows[-3:] == tuple(queues) and not report.healthy
    text = render.render_text(report)
    assert "queue calc     FAIL    500 messages ready and no consumer" in text
    assert "queue celery   OK      3 messages ready, 2 consumers" in text
    assert "queue reports  WARN    no answer from the broker within 2 s" in text
    assert ", 3 queues: " in text.splitlines()[-1]
    assert [row.name for row in report.summarized().rows if row.kind == "queue"] == ["calc", "celery", "reports"]
    assert not any(row.kind == "queue" for row in verdict.evaluate(FLEET, _healthy_probes(), _healthy_view()))


def test_expected_queues_are_the_node_queues_then_the_broadcast_queues():
    node = fleet.Node("calc", "w1", ("calc", "broadcast"), 2)
    assert verdict.expected_queues(node, ("broadcast", "urgent")) == ("calc", "broadcast", "urgent")


@pytest.mark.parametrize("entry, period", [
    ({"heartbeat": {"schedule": 30.0}}, 30.0),
    ({"heartbeat": {"schedule": timedelta(minutes=1)}}, 60.0),
    ({"heartbeat": {"schedule": schedule(45)}}, 45.0),
    ({}, model.DEFAULT_BEAT_PERIOD),
])
def test_beat_period_comes_from_the_heartbeat_entry_of_beat_schedule(entry, period):
    assert verdict.beat_period(entry) == period


def test_the_app_beat_schedule_gives_a_30_second_period():
    assert gather.app_beat_period() == 30.0


@pytest.mark.parametrize("age, up_for, status", [
    (10.0, 600.0, "OK"), (60.0, 600.0, "OK"), (61.0, 600.0, "FAIL"), (None, 600.0, "FAIL"),
    (None, 20.0, "WARN"), (200.0, 20.0, "WARN"), (None, None, "FAIL"),
])
def test_heartbeat_older_than_two_periods_fails_unless_beat_just_started(age, up_for, status):
    assert verdict.heartbeat_verdict(age, up_for, 30.0, 2.0)[0] == status


# Verdicts.

def test_healthy_fleet_has_one_ok_row_per_host_and_node_and_leaves_bystanders_alone():
    rows = verdict.evaluate(FLEET, _healthy_probes(), _healthy_view(), LENIENT, 30.0)
    assert [(row.kind, row.name) for row in rows] == [
        ("host", "mq"), ("host", "w1"), ("node", "calc@w1"), ("node", "reports@w1"), ("host", "w2"),
        ("node", "celery@w2")]
    assert {row.status for row in rows} == {"OK"}
    assert "heartbeat 5 s ago" in render.facts(_rows(rows)["w2"])  # the newest of w1's and w2's


def test_unreachable_host_is_down_and_so_are_its_silent_nodes():
    probes = {**_healthy_probes(), "w1": Probe("w1", error="no SSH connection within 3 s", down=True)}
    view = _healthy_view()
    view = CeleryView(pings={"celery@w2": {"ok": "pong"}}, queues=view.queues, timeout=2)
    rows = _rows(verdict.evaluate(FLEET, probes, view, LENIENT, 30.0))
    assert rows["w1"].status == "DOWN" and "no SSH connection within 3 s" in render.reasons(rows["w1"])[0]
    assert rows["calc@w1"].status == rows["reports@w1"].status == "DOWN"
    assert rows["w2"].status == rows["celery@w2"].status == "OK"


def test_silent_node_with_a_stale_pid_file_is_named_with_it():
    probes = _healthy_probes()
    probes["w1"].data["workers"] = [{"pid": 100, "node": "calc@w1"}]
    probes["w1"].data["pidfiles"] = [{"path": "/run/celery/reports.pid", "name": "reports", "pid": 7, "alive": False}]
    view = _healthy_view()
    view = CeleryView(pings={k: v for k, v in view.pings.items() if k != "reports@w1"}, queues=view.queues)
    row = _rows(verdict.evaluate(FLEET, probes, view, LENIENT, 30.0))["reports@w1"]
    assert row.status == "FAIL"
    assert render.reasons(row) == ("no answer to ping within 2 s; no worker process on the host "
                           "(stale pid file /run/celery/reports.pid)",)


def test_queue_drift_fails_the_node():
    view = _healthy_view()
    view.queues["calc@w1"].pop(0)  # calc
    view.queues["calc@w1"].append(_queue("reports"))
    row = _rows(verdict.evaluate(FLEET, _healthy_probes(), view, LENIENT, 30.0))["calc@w1"]
    assert row.status == "FAIL" and render.reasons(row) == ("queue drift: missing calc; extra reports",)
    assert "queues celery, broadcast, reports" in render.facts(row)  # inventory order, then the extra ones


def test_unexpected_and_duplicate_nodes_are_flagged():
    probes = _healthy_probes()
    probes["w2"].data["workers"] += [{"pid": 300, "node": "stray@w2"}, {"pid": 301, "node": "calc@w1"}]
    rows = verdict.evaluate(FLEET, probes, _healthy_view(), LENIENT, 30.0)
    named = _rows(rows)
    stray = named["stray@w2"]
    assert stray.status == "FAIL" and "not in the inventory (pid 300)" in render.reasons(stray)[0]
    duplicate = [row for row in rows if row.name == "calc@w1"]
    assert [row.host for row in duplicate] == ["w1", "w2"]
    assert all(row.status == "FAIL" for row in duplicate)
    assert "2 worker processes named calc@w1 (w1 pid 100, w2 pid 301)" in render.reasons(duplicate[0])
    assert "the inventory puts it on w1" in render.reasons(duplicate[1])[0]


def test_stopped_units_and_a_second_beat_fail_their_host():
    probes = _healthy_probes()
    probes["w1"].data["units"]["celery.service"].update(active="inactive", sub="dead")
    probes["w1"].data["units"]["celerybeat.service"] = {"active": "active", "sub": "running"}
    probes["w2"].data["units"]["celerybeat.service"].update(active="failed", sub="failed")
    rows = _rows(verdict.evaluate(FLEET, probes, _healthy_view(), LENIENT, 30.0))
    assert render.reasons(rows["w1"]) == ("celery.service inactive (dead)",
                                  "celerybeat.service active, but beat belongs on w2 only")
    assert rows["w2"].status == "FAIL" and render.reasons(rows["w2"])[0] == "celerybeat.service failed"


def test_host_metrics_over_thresholds_warn_or_fail_with_the_limit():
    probes = _healthy_probes()
    probes["w1"] = _probe("w1", workers=("calc@w1", "reports@w1"), load=2.0, disk=93.0)
    rows = _rows(verdict.evaluate(FLEET, probes, _healthy_view(), LENIENT, 30.0))
    assert rows["w1"].status == "FAIL"
    assert render.reasons(rows["w1"]) == ("load 2.00/cpu (>= 1.50/cpu)", "disk / 93% (>= 90%)")


def test_broker_unreachable_fails_the_broker_host_and_leaves_nodes_unchecked():
    view = CeleryView(error="OSError: [Errno 111] Connection refused")
    rows = _rows(verdict.evaluate(FLEET, _healthy_probes(), view, LENIENT, 30.0))
    assert rows["mq"].status == "FAIL" and "broker unreachable" in render.reasons(rows["mq"])[0]
    assert render.reasons(rows["calc@w1"]) == ("not checked: broker unreachable",)


def test_stale_heartbeat_fails_the_beat_host():
    probes = _healthy_probes()
    probes["w1"].data["heartbeat"]["age"] = probes["w2"].data["heartbeat"]["age"] = 95.0
    row = _rows(verdict.evaluate(FLEET, probes, _healthy_view(), LENIENT, 30.0))["w2"]
    assert row.status == "FAIL" and render.reasons(row) == ("last heartbeat 95 s ago (limit 60 s)",)


# Presenters.

def _unhealthy_report() -> Report:
    probes = {**_healthy_probes(), "w2": Probe("w2", error="no SSH connection within 3 s", down=True)}
    view = _healthy_view()
    view = CeleryView(pings={k: v for k, v in view.pings.items() if k != "celery@w2"}, queues=view.queues)
    return Report("inv", verdict.evaluate(FLEET, probes, view, LENIENT, 30.0), elapsed=3.04, bound=5.0)


def test_table_has_a_row_per_host_and_indented_node_and_a_verdict_line():
    lines = render.render_text(_unhealthy_report()).splitlines()
    assert lines[0].split() == ["HOST", "/", "NODE", "STATUS", "DETAIL"]
    assert [line.split()[:2] for line in lines[1:-1]] == [
        ["mq", "OK"], ["w1", "OK"], ["calc@w1", "OK"], ["reports@w1", "OK"], ["w2", "DOWN"], ["celery@w2", "DOWN"]]
    assert lines[3].startswith("  calc@w1")
    assert "unreachable over SSH: no SSH connection within 3 s" in lines[5]
    assert lines[-1] == "UNHEALTHY: 3 hosts, 3 nodes: 4 OK, 2 DOWN (checks took 3.0 s, bound 5 s)"
    column = lines[0].index("STATUS")
    assert [line[column:].split()[0] for line in lines[1:-1]] == ["OK"] * 4 + ["DOWN"] * 2


def test_summary_keeps_one_row_per_host_with_the_worst_status_of_its_nodes():
    probes = _healthy_probes()
    view = _healthy_view()
    view.queues["reports@w1"].clear()
    report = Report("inv", verdict.evaluate(FLEET, probes, view, LENIENT, 30.0)).summarized()
    rows = _rows(report.rows)
    assert list(rows) == ["mq", "w1", "w2"] and report.summary
    assert rows["w1"].status == "FAIL"
    assert render.reasons(rows["w1"]) == ("reports@w1 FAIL: queue drift: missing broadcast, reports",)
    assert render.facts(rows["w2"]) == ("celery, celerybeat active", "heartbeat 5 s ago", "1/1 nodes OK")
    assert render.render_text(report).splitlines()[-1].startswith("UNHEALTHY: 3 hosts: 2 OK, 1 FAIL")


def test_json_holds_the_same_rows_and_the_verdict():
    report = _unhealthy_report()
    data = json.loads(json.dumps(render.report_json(report)))
    assert data["status"] == "DOWN" and data["healthy"] is False and data["bound"] == 5.0
    assert [(row["name"], row["status"]) for row in data["rows"]] == [(r.name, r.status) for r in report.rows]
    assert data["rows"][4]["reasons"] == ["unreachable over SSH: no SSH connection within 3 s"]


def test_warn_alone_is_healthy():
    report = Report("inv", (Row("host", "a", "a", "WARN"), Row("host", "b", "b", "OK")))
    assert report.healthy and report.status == "WARN"


# Command line and inventory.

@pytest.mark.parametrize("argv", [["--format", "xml"], ["--ping-timeout", "0"], ["--connect-timeout", "x"],
                                  ["--disk-warn", "95", "--disk-fail", "90"]])
def test_bad_options_are_usage_errors(argv):
    try:
        code = main(["health", "--inventory", "/nonexistent/hosts.yml", *argv])
    except SystemExit as exit_:
        code = exit_.code
    assert code == EXIT_USAGE


def test_missing_inventory_exits_2_naming_it(capsys):
    assert main(["health", "--inventory", "/nonexistent/hosts.yml"]) == EXIT_USAGE
    assert "/nonexistent/hosts.yml" in capsys.readouterr().err


def test_hosts_carry_their_ssh_connection_fields_from_hostvars():
    listing = {"_meta": {"hostvars": {
        "w": {"ansible_host": "10.0.0.2", "ansible_user": {"__ansible_unsafe": "ops"}, "ansible_port": "2222",
              "ansible_ssh_private_key_file": "~/.ssh/fleet"},
        "v": {"ansible_ssh_user": "legacy", "ansible_ssh_port": 22, "ansible_private_key_file": "/k"},
    }}, "celery_workers": {"hosts": ["w", "v", "bare"]}}
    parsed = fleet.parse_inventory(listing)
    assert (parsed.host("w").user, parsed.host("w").port, parsed.host("w").key_file) == ("ops", 2222, "~/.ssh/fleet")
    assert (parsed.host("v").user, parsed.host("v").port, parsed.host("v").key_file) == ("legacy", 22, "/k")
    assert (parsed.host("bare").user, parsed.host("bare").port, parsed.host("bare").key_file) == (None, None, None)


@pytest.mark.parametrize("port", ["ssh", 0, 70000, True])
def test_bad_ansible_port_is_refused_naming_the_host(port):
    listing = {"_meta": {"hostvars": {"w7": {"ansible_port": port}}}, "celery_workers": {"hosts": ["w7"]}}
    with pytest.raises(fleet.FleetError, match="w7: ansible_port"):
        fleet.parse_inventory(listing)


# The probe itself, run here (this machine's python3 has no psutil: the stdlib fallbacks).

@pytest.fixture
def fake_workers():
    """Processes whose command lines look like celery worker main processes (and one that does not)."""
    argvs = [["celery", "-A", "app", "worker", "-n", "fake-a@probe-test"],
             ["/venv/bin/celery", "worker", "--hostname=fake-b@probe-test"],
             ["python3", "-m", "celery", "worker", "-nfake-c@probe-test"],
             ["celery", "-A", "app", "inspect", "ping", "-n", "fake-d@probe-test"]]
    procs = [subprocess.Popen(["sh", "-c", "sleep 60; :", *argv]) for argv in argvs]
    yield [proc.pid for proc in procs]
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_probe_reports_units_metrics_and_worker_nodes_from_command_lines(fake_workers):
    done = subprocess.run(["sh", "-c", gather.probe_command()], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": "/usr/bin:/bin"}, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert {"units", "heartbeat", "load_per_cpu", "memory_percent", "disk_percent", "workers", "pidfiles"} <= set(data)
    assert 0 <= data["memory_percent"] <= 100 and 0 <= data["disk_percent"]["/"] <= 100
    mine = {w["pid"]: w["node"] for w in data["workers"] if w["node"].endswith("@probe-test")}
    assert mine == dict(zip(fake_workers[:3], ["fake-a@probe-test", "fake-b@probe-test", "fake-c@probe-test"]))


def test_probe_runs_with_a_stdlib_only_python(fake_workers):
    done = subprocess.run([sys.executable, "-S", "-c", gather.probe_source()], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["psutil"] is False


def test_unacknowledged_counts_are_read_from_the_fleet_vhost_of_the_broker_metrics():
    text = "\n".join([
        "# TYPE rabbitmq_detailed_queue_messages_unacked gauge",
        'rabbitmq_detailed_queue_messages_unacked{vhost="celery",queue="calc"} 3',
        'rabbitmq_detailed_queue_messages_unacked{vhost="other",queue="calc"} 9',
        'rabbitmq_detailed_queue_messages_ready{vhost="celery",queue="calc"} 7',
        'rabbitmq_detailed_queue_messages_unacked{vhost="celery",queue="we\\"ird"} 0',
    ])
    assert broker_metrics.parse_unacked(text, "celery") == {"calc": 3, 'we\\"ird': 0}
    assert broker_metrics.queues_url("10.0.0.5", "celery") == (
        "http://10.0.0.5:15692/metrics/detailed?vhost=celery&family=queue_coarse_metrics&family=ra_metrics")
    assert broker_metrics.queues_url("fd00::5", "celery").startswith("http://[fd00::5]:15692/")


def test_a_node_holds_a_member_of_each_quorum_queue_it_reports_raft_series_for():
    text = "\n".join([
        'rabbitmq_detailed_raft_term_total{vhost="celery",queue="orders"} 4',
        'rabbitmq_detailed_raft_log_commit_index{vhost="celery",queue="orders"} 120',
        'rabbitmq_detailed_raft_term_total{vhost="other",queue="billing"} 1',
        'rabbitmq_detailed_queue_messages_unacked{vhost="celery",queue="calc"} 0',
    ])
    assert broker_metrics.parse_members(text, "celery") == {"orders"}


def test_broker_metrics_follow_rabbitmq_prometheus_enabled_else_a_monitoring_group_or_a_cluster():
    assert fleet._broker_metrics({}, default_on=True) is True
    assert fleet._broker_metrics({}, default_on=False) is False
    assert fleet._broker_metrics({"rabbitmq_prometheus_enabled": False}, default_on=True) is False
    assert fleet._broker_metrics({"rabbitmq_prometheus_enabled": "yes"}, default_on=False) is True
    assert fleet._broker_metrics({"rabbitmq_prometheus_enabled": "{{ x }}"}, default_on=True) is True


# A broker cluster: one node out is WARN, a lost majority FAIL.

CLUSTER = fleet.Fleet(
    hosts=(*(fleet.Host(f"mq{n}", f"10.0.0.{10 + n}", ("rabbitmq",)) for n in (1, 2, 3)), *FLEET.hosts[1:3]),
    beat_host="w2", broker_host="mq1", broadcast_queues=("broadcast",), broker_hosts=("mq1", "mq2", "mq3"),
)


def _cluster_probes(out: dict[str, Probe]) -> dict[str, Probe]:
    brokers = {f"mq{n}": _probe(f"mq{n}", units=("rabbitmq-server.service",), heartbeat_age=None) for n in (1, 2, 3)}
    return {**brokers, **{k: v for k, v in _healthy_probes().items() if k != "mq"}, **out}


def test_one_broker_node_out_of_three_warns_naming_it_and_the_fleet_stays_healthy():
    probes = _cluster_probes({"mq2": Probe("mq2", error="no SSH connection within 3 s", down=True)})
    report = Report("cluster", verdict.evaluate(CLUSTER, probes, _healthy_view(), LENIENT, 30.0))
    rows = _rows(report.rows)
    assert rows["mq2"].status == "WARN" and report.healthy
    assert any("2 of 3 nodes up, the cluster keeps its majority" in reason for reason in render.reasons(rows["mq2"]))
    assert rows["mq1"].status == rows["mq3"].status == "OK"


def test_two_broker_nodes_out_of_three_fail_saying_the_majority_is_lost():
    stopped = _probe("mq3", units=(), heartbeat_age=None)
    probes = _cluster_probes({"mq2": Probe("mq2", error="no SSH connection within 3 s", down=True), "mq3": stopped})
    report = Report("cluster", verdict.evaluate(CLUSTER, probes, _healthy_view(), LENIENT, 30.0))
    rows = _rows(report.rows)
    assert not report.healthy and rows["mq2"].status == "DOWN" and rows["mq3"].status == "FAIL"
    for name in ("mq2", "mq3"):
        assert any("only 1 of 3 broker nodes up (mq2, mq3 out)" in reason for reason in render.reasons(rows[name]))


def test_unacknowledged_counts_of_every_cluster_node_are_summed_and_a_silent_node_is_skipped(monkeypatch):
    answers = {"http://a/": ({"orders": 2}, {"orders"}), "http://b/": None,
               "http://c/": ({"celery": 4}, {"orders", "celery"})}
    monkeypatch.setattr(broker_metrics, "fetch_queues", lambda url, vhost, timeout: answers[url])
    metrics = broker_metrics.fetch_queues_all({"a": "http://a/", "b": "http://b/", "c": "http://c/"}, "celery", 1.0)
    assert metrics.unacked == {"orders": 2, "celery": 4} and metrics.answered == ("a", "c")
    assert metrics.leaders == {"orders": ["a"], "celery": ["c"]}
    assert metrics.members == {"orders": ["a", "c"], "celery": ["c"]}
    assert broker_metrics.fetch_queues_all({"b": "http://b/"}, "celery", 1.0) is None


def _replicas(members: dict, leaders: dict, answered=("mq1", "mq2", "mq3")) -> dict[str, Row]:
    metrics = broker_metrics.QueueMetrics(unacked={}, leaders=leaders, members=members, answered=tuple(answered))
    depths = {queue: {"ready": 0, "consumers": 1} for queue in ("calc", "celery", "reports")}
    view = CeleryView(pings=_healthy_view().pings, queues=_healthy_view().queues, depths=depths)
    rows = _rows(verdict.evaluate(CLUSTER, _cluster_probes({}), view, LENIENT, 30.0, queue_metrics=metrics))
    return {name: rows[name] for name in depths}


def _says(row: Row) -> tuple[str, ...]:
    return (*render.reasons(row), *render.facts(row))


def test_a_quorum_queue_with_its_leader_and_every_replica_online_is_ok_and_says_so():
    rows = _replicas({"calc": ["mq1", "mq2", "mq3"]}, {"calc": ["mq2"]})
    assert rows["calc"].status == "OK"
    assert "quorum queue, 3 of 3 replicas online, leader on mq2" in _says(rows["calc"])
    assert not any("quorum" in words for words in _says(rows["reports"]))  # classic: no member anywhere


def test_a_quorum_replica_out_or_missing_on_a_node_that_is_up_warns_naming_the_node():
    out = _replicas({"calc": ["mq1", "mq2"]}, {"calc": ["mq1"]}, answered=("mq1", "mq2"))
    assert out["calc"].status == "WARN"
    assert "quorum queue, 2 of 3 replicas online (mq3 not answering), leader on mq1" in _says(out["calc"])
    missing = _replicas({"calc": ["mq1", "mq2"]}, {"calc": ["mq1"]})
    assert missing["calc"].status == "WARN"
    assert "no replica on mq3 (its node is up: a re-deploy grows the queue to it)" in _says(missing["calc"])


def test_a_quorum_queue_without_a_leader_or_a_majority_of_replicas_fails():
    leaderless = _replicas({"calc": ["mq1", "mq2", "mq3"]}, {})
    assert leaderless["calc"].status == "FAIL"
    assert render.reasons(leaderless["calc"])[0] == (
        "quorum queue without a leader (3 of 3 replicas online): it takes and delivers no message")
    minority = _replicas({"calc": ["mq1"]}, {"calc": ["mq1"]}, answered=("mq1",))
    assert minority["calc"].status == "FAIL"
    assert render.reasons(minority["calc"])[0] == (
        "quorum queue, only 1 of 3 replicas online: it takes and delivers no message until a majority is back")


NODE_METRICS = "\n".join([
    "# TYPE erlang_vm_dist_node_state gauge",
    'erlang_vm_dist_node_state{peer="rabbit@mq2"} 3',
    'erlang_vm_dist_node_state{peer="rabbit@mq3"} 1',
    'erlang_vm_dist_node_state{peer="rabbitmqcli-1-rabbit@mq1"} 3',
    'rabbitmq_identity_info{rabbitmq_node="rabbit@mq1",rabbitmq_cluster="celery-fleet"} 1',
    "rabbitmq_alarms_file_descriptor_limit 0",
    "rabbitmq_alarms_free_disk_space_watermark 0",
    "rabbitmq_alarms_memory_used_watermark 1",
])


def test_a_node_says_its_alarms_and_the_cluster_nodes_it_is_linked_to():
    assert broker_metrics.parse_node_state(NODE_METRICS) == {
        "node": "rabbit@mq1", "cluster": "celery-fleet", "alarms": ["memory_used_watermark"], "peers": ["rabbit@mq2"]}
    assert broker_metrics.parse_node_state("rabbitmq_alarms_memory_used_watermark 0")["peers"] is None
    assert broker_metrics.node_url("fd00::5") == "http://[fd00::5]:15692/metrics"


def _state(node: str, peers: list[str] | None, alarms: list[str] = ()) -> dict:
    return {"node": f"rabbit@{node}", "cluster": "celery-fleet", "alarms": list(alarms),
            "peers": None if peers is None else [f"rabbit@{p}" for p in peers]}


def test_a_broker_alarm_fails_the_node_saying_publishers_are_blocked():
    states = {"mq1": _state("mq1", ["mq2", "mq3"]), "mq2": _state("mq2", ["mq1", "mq3"], ["memory_used_watermark"]),
              "mq3": _state("mq3", ["mq1", "mq2"])}
    report = Report("cluster", verdict.evaluate(CLUSTER, _cluster_probes({}), _healthy_view(), LENIENT, 30.0,
                                                broker_states=states))
    rows = _rows(report.rows)
    assert not report.healthy and rows["mq2"].status == "FAIL" and rows["mq1"].status == rows["mq3"].status == "OK"
    assert render.reasons(rows["mq2"]) == (
        "memory used watermark alarm in effect: RabbitMQ blocks every publisher of the cluster",)


def test_nodes_that_answer_but_are_not_linked_fail_as_a_partition_and_a_silent_node_is_left_to_its_host_row():
    states = {"mq1": _state("mq1", ["mq2"]), "mq2": _state("mq2", ["mq1"]), "mq3": _state("mq3", [])}
    rows = _rows(verdict.evaluate(CLUSTER, _cluster_probes({}), _healthy_view(), LENIENT, 30.0, broker_states=states))
    assert render.reasons(rows["mq3"]) == ("partition: rabbit@mq3 has no link to rabbit@mq1, rabbit@mq2",)
    assert render.reasons(rows["mq1"]) == ("partition: rabbit@mq1 has no link to rabbit@mq3",)
    quiet = {"mq1": _state("mq1", ["mq2"]), "mq2": _state("mq2", ["mq1"]), "mq3": None}
    assert verdict.broker_node_findings(quiet) == {}
    assert verdict.broker_node_findings({"mq1": _state("mq1", None), "mq2": _state("mq2", None)}) == {}
