"""Maintenance tasks, run on every node through the broadcast queues (``make broadcast TASK=name``).

Adding one: write a function below, decorated with ``@maintenance``. That is all: the decorator makes
it a Celery task named ``celery_app.tasks.maintenance.<function>`` (routed to the broadcast queue by
task_routes), with base BroadcastTask (late ack, run once per node per task id, one reply per node)
and registers it in MAINTENANCE, which `fleetctl broadcast` checks TASK names against. Rules:

- JSON in, JSON out: arguments come from ``ARGS`` (a JSON object or list), the return value is
  shown per node.
- Idempotent: a node killed mid-run runs it again when the message is redelivered.
- Return ``{"status": "ok" | "warn" | "fail", ...}`` to grade the node: ``fail`` makes
  `fleetctl broadcast` exit non-zero, like an exception does.

    @maintenance
    def tmp_usage(path: str = "/tmp") -> dict:
        \"\"\"Disk use of path.\"\"\"
        return _disk_usage(path)
"""
from __future__ import annotations

import os
import re
import socket
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil
from billiard.process import current_process
from celery import shared_task

from celery_app.broadcast import BroadcastTask

MAINTENANCE: dict[str, Any] = {}

# logrotate's names for rotated logs: x.log.1, x.log.2.gz, x.log-20240131(.gz) (dateext).
_ROTATED = re.compile(r".+\.log(\.\d+|-\d{8,10})(\.(gz|bz2|xz|zst|lz4))?\Z")
_GRADES = ("ok", "warn", "fail")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def maintenance(fn: Callable | None = None, **options: Any):
    """Register fn as a maintenance task broadcast to every node (options go to ``shared_task``: every app gets it)."""

    def register(func: Callable):
        task = shared_task(base=BroadcastTask, name=f"{__name__}.{func.__name__}", **options)(func)
        MAINTENANCE[func.__name__] = task
        return task

    return register(fn) if fn is not None else register


# Pure helpers.

def grade(percent: float, warn: float, fail: float) -> str:
    """ok, warn or fail for a use percentage against thresholds warn <= fail."""
    if percent >= fail:
        return "fail"
    return "warn" if percent >= warn else "ok"


def worst(grades: Iterable[str]) -> str:
    """The worst of grades (ok < warn < fail); ok when there are none."""
    return max(grades, key=_GRADES.index, default="ok")


def is_rotated_log(name: str) -> bool:
    """Whether a file name is a rotated log (never a live ``*.log``)."""
    return bool(_ROTATED.match(name))


def redact(text: str) -> str:
    """text with passwords in URLs (amqp://user:secret@host) replaced by ***."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def _disk_usage(path: str) -> dict[str, Any]:
    usage = psutil.disk_usage(path)
    return {"total": usage.total, "used": usage.used, "free": usage.free, "percent": usage.percent}


def _node_processes() -> list[dict[str, Any]]:
    """This node's worker process and its pool children, with their resident memory."""
    me = psutil.Process()
    main = me.parent() if current_process().name != "MainProcess" and me.parent() else me
    processes = []
    for proc in [main, *main.children(recursive=True)]:
        try:
            processes.append({
                "pid": proc.pid, "role": "main" if proc.pid == main.pid else "pool",
                "rss": proc.memory_info().rss, "cmdline": redact(" ".join(proc.cmdline()))[:300],
            })
        except psutil.Error:
            continue
    return processes


# Maintenance tasks.

@maintenance(bind=True)
def host_report(self) -> dict[str, Any]:
    """Host name, uptime, load, CPUs, memory, disk use of / and /var/log, and this node's processes."""
    memory = psutil.virtual_memory()
    processes = _node_processes()
    return {
        "hostname": socket.gethostname(),
        "node": self.request.hostname,
        "uptime_s": round(time.time() - psutil.boot_time()),
        "load": [round(load, 2) for load in os.getloadavg()],
        "cpu_count": psutil.cpu_count(),
        "memory": {"total": memory.total, "available": memory.available, "percent": memory.percent},
        "disk": {path: _disk_usage(path) if os.path.isdir(path) else None for path in ("/", "/var/log")},
        "celery_processes": processes,
        "celery_rss": sum(proc["rss"] for proc in processes),
    }


@maintenance
def disk_check(paths: list[str] | None = None, warn: float = 80.0, fail: float = 90.0) -> dict[str, Any]:
    """Grade disk use of paths (default / and /var/log): ok below warn %, warn below fail %, else fail."""
    if not 0 <= warn <= fail <= 100:
        raise ValueError(f"thresholds must satisfy 0 <= warn <= fail <= 100 (got warn={warn}, fail={fail})")
    checked = {}
    for path in paths or ["/", "/var/log"]:
        usage = _disk_usage(path)  # a missing path raises: the node reports a failure
        checked[path] = {"percent": usage["percent"], "free": usage["free"],
                         "status": grade(usage["percent"], warn, fail)}
    return {"status": worst(entry["status"] for entry in checked.values()),
            "warn": warn, "fail": fail, "paths": checked}


@maintenance(bind=True)
def cleanup_logs(self, days: float = 7.0, directory: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Remove rotated worker logs (x.log.1, x.log.2.gz, ...) older than days; never a live x.log.

    directory defaults to CELERY_LOG_DIR (/var/log/celery). Reports what went and the bytes freed.
    """
    if days < 0:
        raise ValueError(f"days must be >= 0 (got {days})")
    root = Path(directory or self.app.conf.fleet_log_dir)
    cutoff = time.time() - days * 86400
    removed, errors, freed, kept = [], [], 0, 0
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode) or not is_rotated_log(entry.name):
            continue
        if info.st_mtime >= cutoff:
            kept += 1
            continue
        try:
            if not dry_run:
                os.unlink(entry.path)
        except FileNotFoundError:  # another node of this host removed it first
            continue
        except OSError as exc:
            errors.append(f"{entry.name}: {exc.strerror}")
            continue
        removed.append(entry.name)
        freed += info.st_size
    return {"status": "warn" if errors else "ok", "directory": str(root), "days": days, "dry_run": dry_run,
            "removed": removed, "bytes_freed": freed, "kept": kept, "errors": errors}
