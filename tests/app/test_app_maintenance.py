"""Maintenance tasks run in-process: cleanup_logs, disk_check, the registry, and the run-once ledger."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import pytest

from celery_app.broadcast import Ledger, reply
from celery_app.tasks.maintenance import (
    MAINTENANCE,
    cleanup_logs,
    disk_check,
    grade,
    host_report,
    is_rotated_log,
    maintenance,
    worst,
)

DAY = 86400


def _file(path, size, age_days):
    path.write_bytes(b"x" * size)
    stamp = time.time() - age_days * DAY
    os.utime(path, (stamp, stamp))
    return path


@pytest.mark.parametrize("name, rotated", [
    ("calc.log", False), ("calc1.log", False), ("calc.log.1", True), ("calc.log.2.gz", True),
    ("celery.log-20240131", True), ("celery.log-20240131.gz", True), ("calc.log.bak", False),
    ("notes.txt", False), ("calc.log.1.swp", False),
])
def test_rotated_log_names_follow_logrotate(name, rotated):
    assert is_rotated_log(name) is rotated


def test_cleanup_logs_removes_old_rotated_logs_and_reports_bytes_freed(tmp_path):
    old = [_file(tmp_path / "calc.log.1", 100, 10), _file(tmp_path / "calc.log.2.gz", 250, 30)]
    live = _file(tmp_path / "calc.log", 1000, 90)  # old but live: never touched
    recent = _file(tmp_path / "reports.log.1", 70, 1)
    other = _file(tmp_path / "notes.txt", 10, 90)

    outcome = cleanup_logs(days=7, directory=str(tmp_path))

    assert outcome["removed"] == ["calc.log.1", "calc.log.2.gz"]
    assert outcome["bytes_freed"] == 350
    assert outcome["kept"] == 1 and outcome["status"] == "ok"
    assert not any(path.exists() for path in old)
    assert live.exists() and recent.exists() and other.exists()


def test_cleanup_logs_dry_run_removes_nothing(tmp_path):
    rotated = _file(tmp_path / "calc.log.3.gz", 42, 30)
    outcome = cleanup_logs(days=7, directory=str(tmp_path), dry_run=True)
    assert outcome["removed"] == ["calc.log.3.gz"] and outcome["bytes_freed"] == 42
    assert rotated.exists()


def test_cleanup_logs_defaults_to_the_configured_log_directory(tmp_path):
    from celery_app import app

    _file(tmp_path / "celery.log.1", 5, 30)
    saved = app.conf.fleet_log_dir
    app.conf.fleet_log_dir = str(tmp_path)
    try:
        assert cleanup_logs(days=7)["removed"] == ["celery.log.1"]
    finally:
        app.conf.fleet_log_dir = saved


def test_cleanup_logs_refuses_negative_days(tmp_path):
    with pytest.raises(ValueError):
        cleanup_logs(days=-1, directory=str(tmp_path))


@pytest.mark.parametrize("percent, expected", [(10, "ok"), (80, "warn"), (89.9, "warn"), (90, "fail"), (99, "fail")])
def test_disk_grade_against_thresholds(percent, expected):
    assert grade(percent, warn=80, fail=90) == expected


def test_worst_grade_wins():
    assert worst(["ok", "warn", "ok"]) == "warn"
    assert worst(["warn", "fail"]) == "fail"
    assert worst([]) == "ok"


def test_disk_check_grades_real_disk_use(tmp_path):
    percent = psutil.disk_usage(str(tmp_path)).percent
    assert disk_check(paths=[str(tmp_path)], warn=0, fail=0)["status"] == "fail"
    if percent < 100:
        assert disk_check(paths=[str(tmp_path)], warn=0, fail=100)["status"] == "warn"
        assert disk_check(paths=[str(tmp_path)], warn=100, fail=100)["status"] == "ok"
    checked = disk_check(paths=[str(tmp_path)])
    assert checked["paths"][str(tmp_path)]["percent"] == pytest.approx(percent, abs=1)


def test_disk_check_refuses_inverted_thresholds():
    with pytest.raises(ValueError):
        disk_check(warn=95, fail=90)


def test_host_report_describes_host_and_node_processes():
    report = host_report()
    assert report["cpu_count"] >= 1 and report["uptime_s"] >= 0 and len(report["load"]) == 3
    assert set(report["disk"]) == {"/", "/var/log"} and report["memory"]["total"] > 0
    assert report["celery_processes"][0]["pid"] == os.getpid() and report["celery_rss"] > 0


def test_builtin_maintenance_tasks_are_registered():
    assert {"host_report", "disk_check", "cleanup_logs"} <= set(MAINTENANCE)
    assert MAINTENANCE["host_report"].name == "celery_app.tasks.maintenance.host_report"


def test_maintenance_decorator_registers_a_broadcast_task():
    @maintenance
    def sample_check(limit: int = 3) -> dict:
        return {"status": "ok", "limit": limit}

    try:
        assert MAINTENANCE["sample_check"] is sample_check
        assert sample_check.name.endswith(".sample_check") and sample_check.acks_late
        assert sample_check(limit=5) == {"status": "ok", "limit": 5}
    finally:
        MAINTENANCE.pop("sample_check", None)


def test_ledger_runs_a_task_id_once(tmp_path):
    ledger = Ledger(tmp_path / "ledger")
    assert ledger.claim("t-1").run
    assert not ledger.claim("t-1").run  # still running in this (live) process
    ledger.done("t-1")
    second = ledger.claim("t-1")
    assert not second.run and second.reason == "already ran on this node"
    assert ledger.claim("t-2").run


def test_ledger_retries_a_run_whose_process_died(tmp_path):
    ledger = Ledger(tmp_path / "ledger")
    child = subprocess.run(
        [sys.executable, "-c", f"import celery_app.broadcast as b; b.Ledger({str(ledger.directory)!r}).claim('t-3')"],
        check=True, timeout=60,
    )
    assert child.returncode == 0 and ledger.state("t-3") == "running"
    claim = ledger.claim("t-3")
    assert claim.run and claim.reason == "previous run was interrupted"


def test_ledger_keeps_odd_task_ids_inside_its_directory(tmp_path):
    ledger = Ledger(tmp_path / "ledger")
    assert ledger.claim("../../escape").run
    assert [path.parent for path in (tmp_path / "ledger").iterdir()] == [tmp_path / "ledger"]


def test_reply_refuses_results_that_are_not_json():
    answer = reply(task_id="t", task="x", node="n@h", status="ok", result={1, 2})
    assert answer["status"] == "failed" and "JSON" in answer["error"]


def test_heartbeat_file_text_reads_back_as_an_age():
    from celery_app.tasks.heartbeat import heartbeat_age, heartbeat_record, parse_heartbeat

    record = heartbeat_record("celery@h", 1000.0)
    text = json.dumps(record)
    assert parse_heartbeat(text) == record and record["timestamp"] == "1970-01-01T00:16:40+00:00"
    assert heartbeat_age(text, now=1045.0) == 45.0
    assert heartbeat_age("garbage", now=1045.0) is None and parse_heartbeat('{"epoch": "x"}') is None
