"""Sample Celery application of tests/release (no line of fleet code): ``celery -A shipyard.celery:app``."""
