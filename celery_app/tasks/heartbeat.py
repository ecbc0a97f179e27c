"""Beat heartbeat: a task beat sends every 30 s that records its last run in a file on the host that ran it.

Where the timestamp lands. Beat runs on exactly one host (group celery_beat), but the heartbeat is an
ordinary task on the default queue ``celery``: whichever node consuming ``celery`` takes it writes
the file on its own host and returns the same record. So one heartbeat proves beat, broker and a
worker all work. A health check reads the file on every worker host consuming ``celery`` and takes
the newest ``epoch`` (fresh = younger than about three periods, 90 s); a single host's file may be
older when another host took the recent heartbeats. Beat sends it with ``expires=25`` (a heartbeat
that waited longer is dropped, never run late, so the file never lies) and ``ignore_result``.

The file: CELERY_HEARTBEAT_FILE (default /var/lib/celery/heartbeat), one JSON object
``{"node", "hostname", "timestamp" (ISO 8601, UTC), "epoch"}``, replaced atomically.
``parse_heartbeat`` and ``heartbeat_age`` read it back.
"""
from __future__ import annotations

import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from celery import shared_task

from celery_app.base import IdempotentTask

PERIOD = 30.0  # seconds; the beat_schedule entry in celery_app/config.py


def heartbeat_record(node: str, now: float) -> dict[str, Any]:
    """The record of a heartbeat run by node at epoch time now."""
    stamp = datetime.fromtimestamp(now, tz=timezone.utc).isoformat(timespec="seconds")
    return {"node": node, "hostname": socket.gethostname(), "timestamp": stamp, "epoch": now}


def parse_heartbeat(text: str) -> dict[str, Any] | None:
    """The record in a heartbeat file's text, or None when it is not one."""
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("epoch"), (int, float)):
        return None
    return record


def heartbeat_age(text: str, now: float) -> float | None:
    """Seconds since the heartbeat in a file's text ran, or None when the text holds none."""
    record = parse_heartbeat(text)
    return None if record is None else max(0.0, now - record["epoch"])


def write_heartbeat(path: Path, record: dict[str, Any]) -> None:
    """Replace the heartbeat file at path with record, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@shared_task(bind=True, base=IdempotentTask)
def heartbeat(self) -> dict[str, Any]:
    """Record this run's time in the heartbeat file of this host, and return the record."""
    record = heartbeat_record(self.request.hostname or "", time.time())
    write_heartbeat(Path(self.app.conf.fleet_heartbeat_file), record)
    return record
