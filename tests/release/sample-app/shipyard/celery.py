"""The application: its own queue (shipping) for its own tasks."""
from celery import Celery

app = Celery("shipyard", include=["shipyard.tasks"])
app.conf.task_routes = {"shipyard.tasks.*": {"queue": "shipping"}}
