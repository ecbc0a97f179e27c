"""The on-host probe as a module: worker command lines, the env file, pid files and heartbeats it reads."""
from __future__ import annotations

import json
import time

import pytest

from fleetctl.health import probe


@pytest.mark.parametrize("argv, name", [
    (["celery", "-A", "app", "worker", "-n", "calc@%h"], "calc@w1"),
    (["/opt/celery/venv/bin/python3", "-m", "celery", "worker", "--hostname=reports@w1"], "reports@w1"),
    (["celery", "worker", "-ncelery@w1"], "celery@w1"),
    (["celery", "worker"], "celery@w1"),
    (["[celeryd: calc@w1:MainProcess] -active- (worker)"], "calc@w1"),
    (["celery", "-A", "app", "inspect", "ping"], None),
    (["python3", "worker", "-n", "x@w1"], None),
    ([], None),
])
def test_node_name_comes_from_the_worker_command_line(argv, name):
    assert probe.node_name(argv, "w1") == name


def test_env_file_reads_assignments_and_strips_quotes(tmp_path):
    path = tmp_path / "celery"
    path.write_text("# comment\nCELERY_APP=\"celery_app\"\nCELERYD_NODES='calc reports'\n"
                    "  CELERY_BIN=/opt/x\nnot a line\n")
    assert probe.env_file(str(path)) == {"CELERY_APP": "celery_app", "CELERYD_NODES": "calc reports",
                                         "CELERY_BIN": "/opt/x"}
    assert probe.env_file(str(tmp_path / "missing")) == {}


def test_pid_files_name_their_node_and_say_whether_it_lives(tmp_path):
    (tmp_path / "calc.pid").write_text("1\n")  # PID 1 always exists
    (tmp_path / "reports.pid").write_text("999999999\n")
    (tmp_path / "celerybeat.pid").write_text("1\n")
    env = {"CELERYD_PID_FILE": f"{tmp_path}/%n.pid", "CELERYBEAT_PID_FILE": f"{tmp_path}/celerybeat.pid"}
    found = {entry["name"]: entry["alive"] for entry in probe.pidfiles(env)}
    assert found == {"calc": True, "reports": False}


def test_heartbeat_age_is_read_from_its_record(tmp_path):
    path = tmp_path / "heartbeat"
    path.write_text(json.dumps({"epoch": time.time() - 42, "node": "celery@w2"}))
    beat = probe.heartbeat({"CELERY_HEARTBEAT_FILE": str(path)})
    assert beat["node"] == "celery@w2" and 41 <= beat["age"] <= 60
    assert probe.heartbeat({"CELERY_HEARTBEAT_FILE": str(tmp_path / "none")})["age"] is None


def test_the_probe_prints_one_json_object_with_every_section(capsys):
    probe.main()
    data = json.loads(capsys.readouterr().out)
    assert {"hostname", "cpus", "load_per_cpu", "memory_percent", "disk_percent", "units", "heartbeat", "workers",
            "pidfiles"} <= set(data)
