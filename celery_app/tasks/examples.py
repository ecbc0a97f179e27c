"""Example tasks showing routing: arithmetic on queue calc, a slow report on reports, whoami on the default queue."""
from __future__ import annotations

import os
import socket
import time

from celery_app.app import app
from celery_app.base import IdempotentTask

# Routes live in celery_app/config.py (task_routes): add, mul, xsum -> calc; report -> reports;
# whoami -> celery (the default queue). apply_async(queue=...) overrides the route per call.


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


@app.task(bind=True, soft_time_limit=300, time_limit=330)
def report(self, title: str = "report", seconds: float = 5.0) -> dict:
    """A slow report: works for seconds, then returns a summary (not idempotent: early ack)."""
    started = time.monotonic()
    time.sleep(max(0.0, float(seconds)))
    return {"title": title, "node": self.request.hostname, "seconds": round(time.monotonic() - started, 3)}


@app.task(bind=True, base=IdempotentTask)
def whoami(self) -> dict:
    """The node, host and process that ran this task (tests use it to prove where a task ran)."""
    return {"node": self.request.hostname, "hostname": socket.gethostname(), "pid": os.getpid()}
