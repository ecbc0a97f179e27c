"""Tasks sent to a named queue run on the nodes bound to that queue, and on no other node."""

from __future__ import annotations

import json

# Sends whoami (celery_app.tasks.examples) to each queue from a worker host, as the app would, and
# collects the nodes that ran it (results come back over the rpc:// backend).
_SEND = """cd /tmp && /opt/celery/venv/bin/python - <<'EOF'
import json
from celery_app.tasks.examples import whoami
sent = {q: [whoami.apply_async(queue=q) for _ in range(8)] for q in ("calc", "reports", "celery")}
print(json.dumps({q: sorted({r.get(timeout=60)["node"] for r in results}) for q, results in sent.items()}))
EOF"""


def test_task_sent_to_a_queue_runs_only_on_nodes_bound_to_that_queue(deployed_fleet):
    result = deployed_fleet.host("worker2").run(_SEND)
    assert result.rc == 0, result.stderr
    ran_on = json.loads(result.stdout.strip().splitlines()[-1])
    assert ran_on["calc"] == ["calc@worker1"]
    assert ran_on["reports"] == ["reports@worker1"]
    assert set(ran_on["celery"]) <= {"calc@worker1", "celery@worker2"}
