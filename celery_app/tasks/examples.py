"""Example tasks: arithmetic on queue calc, a slow report on reports, whoami and record on the default queue."""
from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

from celery_app.app import app
from celery_app.base import IdempotentTask

# Routes live in celery_app/config.py (task_routes): add, mul, xsum -> calc; report -> reports;
# whoami -> celery; record has no route: the default queue, celery. apply_async(queue=...) overrides
# the route per call.

RECORDS_DIR = "records"  # under CELERY_STATE_DIR (/var/lib/celery): one file per ledger name
_LEDGER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


@app.task(base=IdempotentTask)
def add(x: float, y: float) -> float:
    """x + y (pure, so safe to run twice: late acks)."""
    return x + y


@app.task(base=IdempotentTask)
def mul(x: float, y: float) -> float:
    """x * y."""
    return x * y


@app.task(base=IdempotentTask)
def xsum(numbers: list[float]) -> float:
    """Sum of numbers."""
    return sum(numbers)


# No time limits of its own: the worker's --time-limit/--soft-time-limit (celery_worker_task_time_limit)
# bound it, and with them the warm shutdown that systemd waits for (TimeoutStopSec).
@app.task(bind=True)
def report(self, title: str = "report", seconds: float = 5.0) -> dict:
    """A slow report: works for seconds, then returns a summary (not idempotent: early ack)."""
    started = time.monotonic()
    time.sleep(max(0.0, float(seconds)))
    return {"title": title, "node": self.request.hostname, "seconds": round(time.monotonic() - started, 3)}


@app.task(bind=True, base=IdempotentTask)
def whoami(self) -> dict:
    """The node, host and process that ran this task (tests use it to prove where a task ran)."""
    return {"node": self.request.hostname, "hostname": socket.gethostname(), "pid": os.getpid()}


def record_path(state_dir: str | os.PathLike, ledger: str) -> Path:
    """The file record() appends to for ledger (a plain name: letters, digits, '.', '_', '-')."""
    if not _LEDGER_NAME.match(ledger) or ".." in ledger:
        raise ValueError(f"ledger must be a plain file name, not {ledger!r}")
    return Path(state_dir) / RECORDS_DIR / f"{ledger}.log"


def append_record(path: Path, line: str) -> None:
    """Append one line to path with a single O_APPEND write (whole lines even with many writers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)


@app.task(bind=True, base=IdempotentTask, ignore_result=True)
def record(self, ledger: str, seconds: float = 0.0) -> None:
    """Work for seconds, then append "<task id> <node>" to the ledger's file on this host.

    At least once: acknowledged late and requeued when the worker dies, so a task id can appear
    twice (a run cut short after its line was written); it never goes missing. The lines live in
    CELERY_STATE_DIR/records/<ledger>.log on the host that ran the task (tests count them).
    """
    path = record_path(self.app.conf.fleet_state_dir, ledger)
    time.sleep(max(0.0, float(seconds)))
    append_record(path, f"{self.request.id} {self.request.hostname}")
