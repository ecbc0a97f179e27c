"""Workers refuse pickle: a pickle message is rejected, logged, never run nor redelivered; json still runs."""
# Each message is published straight to the broker from a worker host (kombu, the app's broker URL from
# /etc/conf.d/celery), as anyone holding the broker password could. Its pickle, if loaded, would create
# a file in /var/lib/celery (writable by the workers): the trace of code run from a message.

from __future__ import annotations

import base64
import json
import pickle
import uuid

import pytest

# A log record (not a traceback line) reporting a refused pickle: Celery's "Received invalid task message:
# Refusing ..." (rejected, not requeued) or "Can't decode message body: ContentDisallowed('Refusing ..." (acked).
REFUSAL = r"^\[.*Refusing to deserialize untrusted content of type pickle"
WORKERS = ["worker1", "worker2"]
# Nodes of the sandbox inventory (playbooks/inventories/sandbox/hosts.yml) and their hosts.
NODES = {"calc": "worker1", "reports": "worker1", "celery": "worker2"}
ADD = "celery_app.tasks.examples.add"

# Publishes one message (body given base64-encoded) with the app's own connection settings.
_PUBLISH = """cd /tmp && /opt/celery/venv/bin/python - <<'EOF'
import base64, json
from kombu import Producer
from celery_app import app
with app.connection_for_write() as conn:
    Producer(conn).publish(base64.b64decode({body!r}), exchange={exchange!r}, routing_key={routing_key!r},
                           content_type="application/x-python-serialize", content_encoding="binary",
                           headers=json.loads({headers!r}), delivery_mode=2, retry=True)
EOF"""
_ADD = f"""cd /tmp && /opt/celery/venv/bin/python -c 'from celery_app import app; \
print(app.send_task("{ADD}", (2, 3), queue="calc").get(timeout=60))'"""


class _LeavesTrace:
    """Unpickled, it opens (creates) its file: what a hostile pickle does with os.system instead."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _message(kind: str, trace: str) -> dict:
    """Exchange, routing key, headers and pickle body of a hostile message of the given kind."""
    task_id = str(uuid.uuid4())
    payload = _LeavesTrace(trace)
    if kind == "task":  # protocol 2: the task name in the headers, (args, kwargs, embed) pickled
        headers = {"lang": "py", "task": ADD, "id": task_id, "root_id": task_id, "parent_id": None,
                   "group": None, "retries": 0, "eta": None, "expires": None, "argsrepr": "", "kwargsrepr": ""}
        return {"exchange": "calc", "routing_key": "calc", "headers": headers,
                "body": ((payload, 3), {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})}
    if kind == "task-v1":  # protocol 1: everything in the pickled body
        return {"exchange": "calc", "routing_key": "calc", "headers": {},
                "body": {"task": ADD, "id": task_id, "args": (payload, 3), "kwargs": {}}}
    # a remote control command to every node (fanout exchange celery.pidbox)
    return {"exchange": "celery.pidbox", "routing_key": "", "headers": {},
            "body": {"method": "ping", "arguments": {"trace": payload}, "destination": None,
                     "reply_to": None, "ticket": task_id}}


def _publish(fleet, kind: str) -> str:
    """Publish a hostile pickle message of kind from worker2; the path of the trace it would leave."""
    trace = f"/var/lib/celery/pickle-ran-{uuid.uuid4().hex}"
    message = _message(kind, trace)
    sent = fleet.host("worker2").run(_PUBLISH.format(
        body=base64.b64encode(pickle.dumps(message["body"])).decode(), exchange=message["exchange"],
        routing_key=message["routing_key"], headers=json.dumps(message["headers"])))
    assert sent.rc == 0, sent.stderr
    return trace


def _refusals(fleet, node: str) -> int:
    """How often the node's log records a refused pickle."""
    out = fleet.host(NODES[node]).run(f"grep -c '{REFUSAL}' /var/log/celery/{node}.log").stdout.strip()
    return int(out or 0)


def _wait_for_refusal(fleet, node: str, before: int) -> int:
    """The node's refusal count once it exceeds before (or after a bounded wait)."""
    command = (f"for i in $(seq 120); do n=$(grep -c '{REFUSAL}' /var/log/celery/{node}.log); "
               f"[ \"$n\" -gt {before} ] && break; sleep 0.5; done; echo $n")
    return int(fleet.host(NODES[node]).run(command).stdout.strip() or 0)


def _queue_depth(fleet, queue: str) -> tuple[int, int]:
    """Ready and unacknowledged messages of a queue of the celery vhost."""
    rows = json.loads(fleet.host("broker").check_output(
        "rabbitmqctl -q list_queues -p celery name messages_ready messages_unacknowledged --formatter json"))
    row = next(r for r in rows if r["name"] == queue)
    return row["messages_ready"], row["messages_unacknowledged"]


@pytest.mark.parametrize("kind, nodes", [("task", ["calc"]), ("task-v1", ["calc"]),
                                         ("remote-control", ["calc", "reports", "celery"])])
def test_worker_refuses_pickle_logs_it_and_runs_nothing(deployed_fleet, kind, nodes):
    before = {node: _refusals(deployed_fleet, node) for node in nodes}

    trace = _publish(deployed_fleet, kind)

    after = {node: _wait_for_refusal(deployed_fleet, node, before[node]) for node in nodes}
    assert {node: after[node] - before[node] for node in nodes} == {node: 1 for node in nodes}
    logged = {node: deployed_fleet.host(NODES[node]).run(f"grep -c {trace} /var/log/celery/{node}.log").stdout.strip()
              for node in nodes}
    assert logged == {node: "1" for node in nodes}  # the refused message's body is in the record
    assert [h for h in WORKERS if deployed_fleet.host(h).file(trace).exists] == []


@pytest.mark.parametrize("kind", ["task", "task-v1"])
def test_refused_pickle_task_is_dropped_and_the_worker_still_runs_json_tasks(deployed_fleet, kind):
    before = _refusals(deployed_fleet, "calc")
    trace = _publish(deployed_fleet, kind)
    assert _wait_for_refusal(deployed_fleet, "calc", before) == before + 1

    assert _queue_depth(deployed_fleet, "calc") == (0, 0)  # neither requeued nor held: dropped
    added = deployed_fleet.host("worker2").run(_ADD)
    assert (added.rc, added.stdout.strip()) == (0, "5"), added.stderr
    assert _refusals(deployed_fleet, "calc") == before + 1  # it never came back
    assert not deployed_fleet.host("worker1").file(trace).exists


def test_hostile_pickle_leaves_its_trace_when_loaded_as_the_workers_user(deployed_fleet):
    """The control of the tests above: the same body, loaded as user celery, does create its file."""
    trace = f"/var/lib/celery/pickle-ran-{uuid.uuid4().hex}"
    body = base64.b64encode(pickle.dumps(_message("task", trace)["body"])).decode()
    worker1 = deployed_fleet.host("worker1")
    loaded = worker1.run(f"cd /tmp && su -s /bin/sh celery -c '/opt/celery/venv/bin/python -' <<'EOF'\n"
                         f"import base64, pickle\npickle.loads(base64.b64decode({body!r}))\nEOF")
    assert loaded.rc == 0, loaded.stderr
    assert worker1.file(trace).exists
    worker1.run(f"rm -f {trace}")
