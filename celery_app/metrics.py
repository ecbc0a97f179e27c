"""Fleet metrics of this worker host's nodes, written for node exporter's textfile collector."""
# `python -m celery_app.metrics OUT`, run every 30 s by celery-fleet-metrics.timer (role celery_metrics) as
# a user of its own in group celery, with /etc/conf.d/celery as environment: the host's nodes (CELERYD_NODES) are asked
# active_queues through the broker, the heartbeat file and the release in use are read, and OUT is
# replaced atomically (a reader never sees half a file). Metrics, named as the fleet names nodes:
# - celery_fleet_node_up{node}: 1 when the node answered within the timeout, else 0;
# - celery_fleet_node_queue_drift{node}: 1 when an answering node consumes other queues than its -Q:<name> of
#   CELERYD_OPTS (the inventory's queues plus the broadcast queues, by their alias), else 0;
# - celery_fleet_broker_reachable: 1 when the broker took the question, else 0 (every node is 0 then);
# - celery_fleet_heartbeat_timestamp_seconds: when beat's heartbeat last ran on this host (absent when it never
#   did: another host may take them all); the fleet's freshest is the maximum over the hosts;
# - celery_fleet_release_info{release}: 1, for the release /opt/celery/current points to (absent without one);
# - celery_fleet_metrics_timestamp_seconds: when the file was written.
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from celery_app.tasks.heartbeat import parse_heartbeat

TIMEOUT = 3.0  # seconds for the nodes' answers
CURRENT = Path("/opt/celery/current")


def expected_queues(nodes: list[str], opts: str) -> dict[str, set[str]]:
    """Full node name -> the queues of its -Q:<name> option in CELERYD_OPTS."""
    given = dict(re.findall(r"-Q:(\S+) (\S+)", opts))
    return {node: set(given.get(node.split("@", 1)[0], "").split(",")) - {""} for node in nodes}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(expected: dict[str, set[str]], consumed: dict[str, set[str]] | None, heartbeat: float | None,
           release: str | None, now: float) -> str:
    """The metrics text. consumed: node -> queues of each node that answered; None when the broker did not."""
    answered = consumed or {}
    lines = [
        "# HELP celery_fleet_node_up Whether the node answered active_queues through the broker.",
        "# TYPE celery_fleet_node_up gauge",
        *(f'celery_fleet_node_up{{node="{_label(n)}"}} {int(n in answered)}' for n in sorted(expected)),
        "# HELP celery_fleet_node_queue_drift Whether the node consumes other queues than the inventory's.",
        "# TYPE celery_fleet_node_queue_drift gauge",
        *(f'celery_fleet_node_queue_drift{{node="{_label(n)}"}} {int(answered[n] != expected[n])}'
          for n in sorted(expected) if n in answered),
        "# HELP celery_fleet_broker_reachable Whether the broker took the question to the nodes.",
        "# TYPE celery_fleet_broker_reachable gauge",
        f"celery_fleet_broker_reachable {int(consumed is not None)}",
    ]
    if heartbeat is not None:
        lines += ["# HELP celery_fleet_heartbeat_timestamp_seconds When beat's heartbeat last ran on this host.",
                  "# TYPE celery_fleet_heartbeat_timestamp_seconds gauge",
                  f"celery_fleet_heartbeat_timestamp_seconds {heartbeat:.3f}"]
    if release:
        lines += ["# HELP celery_fleet_release_info The application release this host runs.",
                  "# TYPE celery_fleet_release_info gauge",
                  f'celery_fleet_release_info{{release="{_label(release)}"}} 1']
    lines += ["# HELP celery_fleet_metrics_timestamp_seconds When these metrics were written.",
              "# TYPE celery_fleet_metrics_timestamp_seconds gauge",
              f"celery_fleet_metrics_timestamp_seconds {now:.3f}"]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Replace path with text: a temporary file beside it (node exporter skips names not ending .prom), renamed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def ask(nodes: list[str], timeout: float = TIMEOUT) -> dict[str, set[str]] | None:
    """Node -> queues it consumes, of the nodes that answered; None when the broker could not be asked."""
    from celery_app.app import app

    app.conf.update(broker_connection_retry=False, broker_connection_retry_on_startup=False,
                    broker_connection_timeout=timeout)
    try:
        replies = app.control.inspect(destination=nodes, timeout=timeout).active_queues() or {}
    except Exception:  # noqa: BLE001 - any broker failure means "not reachable"
        return None
    # A node's own broadcast queue is "<name>.<node>", aliased "<name>" as -Q names it.
    return {node: {q.get("alias") or q["name"] for q in queues} for node, queues in replies.items() if node in nodes}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print(f"usage: python -m celery_app.metrics OUT\n{__doc__}", file=sys.stderr)
        return 2
    nodes = os.environ.get("CELERYD_NODES", "").split()
    expected = expected_queues(nodes, os.environ.get("CELERYD_OPTS", ""))
    heartbeat_file = Path(os.environ.get("CELERY_HEARTBEAT_FILE") or "/var/lib/celery/heartbeat")
    try:
        record = parse_heartbeat(heartbeat_file.read_text(encoding="utf-8"))
    except OSError:
        record = None
    release = os.readlink(CURRENT).rstrip("/").rsplit("/", 1)[-1] if CURRENT.is_symlink() else None
    text = render(expected, ask(nodes), record["epoch"] if record else None, release, time.time())
    write_atomically(Path(argv[1]), text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
