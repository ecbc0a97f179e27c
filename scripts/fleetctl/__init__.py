"""Operator tools for bare-metal Celery fleets: health, broadcast, rolling restart, sandbox, bench."""
