"""The fleet's Celery application; each worker node swaps in its own durable broadcast queues (celery_app.fleet)."""
from __future__ import annotations

from celery import Celery

from celery_app.events import use_unconfirmed_events
from celery_app.fleet import node_queues

__all__ = ["app", "node_queues"]

app = Celery("celery_app")
app.config_from_object("celery_app.config")
use_unconfirmed_events(app)
