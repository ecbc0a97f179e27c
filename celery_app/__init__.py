"""Fleet Celery application package: ``celery -A celery_app`` loads ``app``."""
from celery_app.app import app

__all__ = ["app"]
