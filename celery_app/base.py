"""Task base classes: IdempotentTask opts a task into late acknowledgement."""
from __future__ import annotations

from celery import Task


class IdempotentTask(Task):
    """Base for tasks safe to run twice: acknowledged after they finish, requeued if the worker dies.

    Use ``@app.task(base=IdempotentTask)``. Other tasks keep Celery's early acknowledgement (at most
    once), because re-running a non-idempotent task after a crash can do harm.
    """

    # Slower (the broker holds the message until the task ends) but a crash re-delivers the task.
    acks_late = True
    # A worker killed mid-task (OOM, SIGKILL) requeues the message instead of acknowledging it.
    reject_on_worker_lost = True
