"""Real worker nodes on the test vhost: routing, broadcast queues, heartbeat, pickle refused."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from support.app import BROADCAST_QUEUES

RESULT_WITHIN = 30  # seconds; a guard against hanging, not a speed assertion


def _received(node, task_id: str) -> bool:
    return f"[{task_id}] received" in node.log()


def test_task_routed_to_calc_runs_only_on_the_node_bound_to_calc(app, workers):
    from celery_app.tasks.examples import add

    result = add.delay(2, 3)
    assert result.get(timeout=RESULT_WITHIN) == 5
    ran_on = [name for name, node in workers.items() if _received(node, result.id)]
    assert ran_on == ["calc@host-a"]


def test_explicit_queue_decides_which_node_runs_whoami(app, workers):
    from celery_app.tasks.examples import whoami

    for queue, node in [("calc", "calc@host-a"), ("reports", "reports@host-a"), ("celery", "celery@host-b")]:
        assert whoami.apply_async(queue=queue).get(timeout=RESULT_WITHIN)["node"] == node
    assert whoami.delay().get(timeout=RESULT_WITHIN)["node"] == "celery@host-b"  # default queue


def test_every_node_binds_each_broadcast_queue_to_a_fanout_exchange_of_that_name(app, workers):
    active = app.control.inspect(destination=list(workers), timeout=5).active_queues()
    assert set(active) == set(workers)
    for node, queues in active.items():
        for name in BROADCAST_QUEUES:
            [queue] = [q for q in queues if q.get("alias") == name]
            assert queue["exchange"]["name"] == name and queue["exchange"]["type"] == "fanout"
            assert queue["name"] == f"{name}.{node}" and queue["durable"] and not queue["auto_delete"]


def test_heartbeat_writes_its_time_on_the_host_that_ran_it(app, workers):
    from celery_app.tasks.heartbeat import heartbeat, parse_heartbeat

    record = heartbeat.delay().get(timeout=RESULT_WITHIN)
    node = workers[record["node"]]
    written = parse_heartbeat(node.dirs.heartbeat.read_text())
    assert written == record and record["node"] == "celery@host-b"


def test_pickle_message_is_rejected_and_not_executed(app, workers):
    from celery_app.tasks.examples import whoami
    from celery_app.tasks.heartbeat import heartbeat

    node = workers["celery@host-b"]
    before = node.dirs.heartbeat.read_text() if node.dirs.heartbeat.exists() else None
    heartbeat.apply_async(serializer="pickle", queue="celery")
    # The queue is FIFO and this node its only consumer: once whoami ran, the pickle message was handled.
    assert whoami.apply_async(queue="celery").get(timeout=RESULT_WITHIN)["node"] == node.full_name
    after = node.dirs.heartbeat.read_text() if node.dirs.heartbeat.exists() else None
    assert after == before  # the heartbeat never ran
    assert "Refusing to deserialize untrusted content of type pickle" in node.log()


def test_inspect_ping_works_with_only_the_env_file(app, workers, broker_url, tmp_path):
    env_file = tmp_path / "celery"
    env_file.write_text(f'CELERY_APP=celery_app\nCELERY_BROKER_URL="{broker_url}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY")}
    env.update(CELERY_ENV_FILE=str(env_file))
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "celery_app", "inspect", "ping", "-j", "-d", "celery@host-b"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"celery@host-b": {"ok": "pong"}}


def test_a_task_sends_the_events_flower_shows(app, workers):
    """task-sent from the publisher, task-received/-started/-succeeded from the node that ran it."""
    import threading
    import time

    from celery_app.tasks.examples import add

    wanted = {"task-sent", "task-received", "task-started", "task-succeeded"}
    seen: list[dict] = []
    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": seen.append})

        def capture() -> None:
            try:
                receiver.capture(limit=None, timeout=RESULT_WITHIN, wakeup=False)
            except Exception:  # noqa: BLE001 - the socket times out once the events stop
                pass

        thread = threading.Thread(target=capture, daemon=True)
        thread.start()
        # The receiver's queue is bound a moment after it starts: a task sent before that shows no
        # events, so one more is sent each second until one task's events all arrive.
        sent, complete, deadline = [], None, time.monotonic() + RESULT_WITHIN
        while complete is None and time.monotonic() < deadline:
            sent.append(add.delay(20, 22))
            time.sleep(1)
            complete = next((r for r in sent if wanted <= {e["type"] for e in seen if e.get("uuid") == r.id}), None)
        receiver.should_stop = True
        thread.join(RESULT_WITHIN)
    assert complete is not None, sorted({e["type"] for e in seen})
    assert complete.get(timeout=RESULT_WITHIN) == 42
    events = {e["type"]: e for e in seen if e.get("uuid") == complete.id}
    assert events["task-succeeded"]["hostname"] == "calc@host-a"
