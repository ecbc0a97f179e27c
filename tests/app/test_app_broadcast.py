"""`fleetctl broadcast` against real worker nodes: one answer per node, missing nodes, refusals, host down."""
from __future__ import annotations

import json
import time

import pytest

from fleetctl import broadcast
from fleetctl.cli.broadcast import outcome_json, render_text
from fleetctl.errors import UsageError
from support.app import FLEET, LATE, READY_WITHIN, wait_ready, write_inventory

ALL_NODES = sorted(f"{name}@{host}" for host, nodes in FLEET.items() for name in nodes)


def _json(done) -> dict:
    assert done.stdout, done.stderr
    return json.loads(done.stdout)


# Pure parts.

def test_args_must_be_a_json_object_or_list():
    assert broadcast.parse_task_args('{"days": 3}') == ([], {"days": 3})
    assert broadcast.parse_task_args("[3]") == ([3], {})
    assert broadcast.parse_task_args("") == ([], {})
    for bad in ("{days: 3}", "3", '"text"', "null"):
        with pytest.raises(UsageError):
            broadcast.parse_task_args(bad)


def test_answers_to_other_broadcasts_or_malformed_replies_are_ignored():
    good = {"task_id": "t1", "node": "calc@h", "status": "ok", "result": {"a": 1}}
    assert broadcast.answer_from(good, "t1").node == "calc@h"
    assert broadcast.answer_from(good, "t2") is None
    assert broadcast.answer_from({**good, "status": "weird"}, "t1") is None
    assert broadcast.answer_from(["not", "a", "dict"], "t1") is None


def test_outcome_groups_answers_by_host_and_marks_missing_nodes():
    outcome = broadcast.Outcome(
        task="t", task_id="id", timeout=5, expected=("a@h1", "b@h1", "c@h2"),
        answers=(broadcast.Answer("a@h1", "ok", {"status": "ok"}), broadcast.Answer("x@h9", "ok", 1),
                 broadcast.Answer("c@h2", "ok", {"status": "fail"})),
    )
    assert outcome.missing == ("b@h1",) and outcome.unexpected == ("x@h9",) and outcome.failed == ("c@h2",)
    assert [a.node for a in outcome.hosts()["h1"]] == ["a@h1", "b@h1"] and not outcome.ok
    text = render_text(outcome)
    assert "MISSING" in text and "not in the inventory" in text and text.splitlines()[-1].startswith("NOT OK")
    assert outcome_json(outcome)["hosts"]["h2"]["c@h2"]["status"] == "failed"


# Against the running test fleet.

def test_every_node_answers_once_grouped_by_host(workers, inventory, run_broadcast):
    done = run_broadcast("--inventory", str(inventory), "--task", "host_report", "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    outcome = _json(done)
    assert outcome["ok"] and outcome["missing"] == [] and outcome["answered"] == len(ALL_NODES)
    assert sorted(outcome["hosts"]) == sorted(FLEET)
    for host, nodes in outcome["hosts"].items():
        assert sorted(nodes) == sorted(f"{name}@{host}" for name in FLEET[host])
        for node, answer in nodes.items():
            assert answer["status"] == "ok" and answer["result"]["node"] == node


def test_returns_as_soon_as_all_expected_nodes_answered(workers, inventory, run_broadcast):
    # With a 10-minute timeout, finishing at all (subprocess guard: 2 minutes) means it did not wait it out.
    done = run_broadcast("--inventory", str(inventory), "--task", "disk_check", "--timeout", "600", "--format", "json")
    outcome = _json(done)
    assert done.returncode == 0 and outcome["complete"] is True


def test_text_output_shows_one_line_per_node_under_its_host(workers, inventory, run_broadcast):
    done = run_broadcast("--inventory", str(inventory), "--task", "disk_check", "--args", '{"warn": 100, "fail": 100}')
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines.index("host-a") < lines.index("host-b")
    for node in ALL_NODES:
        assert sum(line.strip().startswith(node + " ") for line in lines) == 1
    assert lines[-1] == f"ok: {len(ALL_NODES)}/{len(ALL_NODES)} nodes answered"


def test_node_not_running_is_reported_missing_with_nonzero_exit(workers, fleet_root, run_broadcast):
    ghost = write_inventory(fleet_root / "inventories" / "ghost", {**FLEET, "host-z": {"celery": ["celery"]}})
    done = run_broadcast("--inventory", str(ghost), "--task", "disk_check", "--timeout", "2", "--format", "json")
    assert done.returncode == 1
    outcome = _json(done)
    assert outcome["missing"] == ["celery@host-z"]
    assert outcome["hosts"]["host-z"]["celery@host-z"]["status"] == "missing"
    assert outcome["answered"] == len(ALL_NODES)
    text = run_broadcast("--inventory", str(ghost), "--task", "disk_check", "--timeout", "2")
    assert text.returncode == 1 and "celery@host-z" in text.stdout and "MISSING" in text.stdout


def test_task_failure_shows_the_error_and_exits_nonzero(workers, inventory, run_broadcast):
    done = run_broadcast("--inventory", str(inventory), "--task", "disk_check",
                         "--args", '{"paths": ["/nonexistent/disk"]}', "--format", "json")
    assert done.returncode == 1
    outcome = _json(done)
    assert sorted(outcome["failed"]) == ALL_NODES and outcome["missing"] == []
    answer = outcome["hosts"]["host-b"]["celery@host-b"]
    assert answer["status"] == "failed" and answer["error"].startswith("FileNotFoundError")


def test_node_graded_fail_exits_nonzero(workers, inventory, run_broadcast):
    done = run_broadcast("--inventory", str(inventory), "--task", "disk_check", "--args", '{"warn": 0, "fail": 0}')
    assert done.returncode == 1 and "FAILED" in done.stdout


@pytest.mark.parametrize("task, args, message", [
    ("no_such_task", "", "unknown maintenance task"),
    ("disk_check", "{not json", "not valid JSON"),
    ("disk_check", "42", "object or list"),
    ("disk_check", '{"bogus": 1}', "do not fit"),
])
def test_bad_task_or_args_are_refused_before_anything_is_sent(tmp_path, run_broadcast, task, args, message):
    # No inventory and no reachable broker: exit 2 proves neither was touched.
    done = run_broadcast("--inventory", str(tmp_path / "absent.yml"), "--task", task, "--args", args,
                         url="amqp://nobody:secret@127.0.0.1:1/none")
    assert done.returncode == 2
    assert message in done.stderr and done.stdout == "" and "secret" not in done.stderr


def test_unreachable_broker_is_reported_without_its_password(inventory, run_broadcast):
    done = run_broadcast("--inventory", str(inventory), "--task", "disk_check",
                         url="amqp://nobody:hunter2@127.0.0.1:1/none")
    assert done.returncode == 3 and "hunter2" not in done.stderr + done.stdout and "***" in done.stderr


def _wait_for_ledger(node, task_id: str, state: str) -> None:
    from celery_app.broadcast import LEDGER_DIR, Ledger

    ledger = Ledger(node.dirs.state / LEDGER_DIR / node.full_name)
    deadline = time.monotonic() + READY_WITHIN
    while ledger.state(task_id) != state:
        assert time.monotonic() < deadline, f"{node.full_name} never ran {task_id}:\n{node.log()[-3000:]}"
        time.sleep(0.2)


def _wait_for_log(node, line: str) -> None:
    deadline = time.monotonic() + READY_WITHIN
    while line not in node.log():
        assert time.monotonic() < deadline, f"{node.full_name} never logged {line!r}:\n{node.log()[-3000:]}"
        time.sleep(0.2)


def test_host_down_gets_the_broadcast_when_back_and_never_runs_it_twice(
    app, workers, late_node, fleet_root, run_broadcast,
):
    host, name, queues = LATE
    with_late = write_inventory(fleet_root / "inventories" / "with-late", {**FLEET, host: {name: queues}})
    late_node.start()  # a node that has run once has its durable broadcast queue
    wait_ready(app, [late_node])
    late_node.stop()

    task_id = "maintenance-host-down-1"
    first = run_broadcast("--inventory", str(with_late), "--task", "host_report", "--task-id", task_id,
                          "--timeout", "3", "--format", "json")
    assert first.returncode == 1 and _json(first)["missing"] == [late_node.full_name]

    late_node.start()
    wait_ready(app, [late_node])
    _wait_for_ledger(late_node, task_id, "done")  # ran from its queue once back
    _wait_for_log(late_node, f"host_report[{task_id}] succeeded")  # logged after the task body returns
    assert late_node.log().count(f"host_report[{task_id}] succeeded") == 1

    again = run_broadcast("--inventory", str(with_late), "--task", "host_report", "--task-id", task_id,
                          "--format", "json")
    outcome = _json(again)
    assert again.returncode == 0 and outcome["complete"]
    statuses = {node: answer["status"] for nodes in outcome["hosts"].values() for node, answer in nodes.items()}
    assert set(statuses.values()) == {"skipped"}  # every node had run it: nobody runs it twice
    assert late_node.log().count(f"host_report[{task_id}] succeeded") == 1
    late_node.stop()
