"""Broadcast plumbing: per-node durable broadcast queues, one reply per execution, and a run-once ledger.

Queues. Each name in CELERY_BROADCAST_QUEUES is a durable fanout exchange of that name. Every worker
node binds its own durable queue ``<name>.<node>`` (alias ``<name>``, so ``-Q ...,broadcast`` selects
it) to that exchange. A node that is down keeps its queue, so it still gets the broadcasts sent while
it was away when it comes back, bounded by the queue's message TTL (QUEUE_MESSAGE_TTL) and by the
task's own ``expires`` (set by `fleetctl broadcast`). A queue unused for QUEUE_EXPIRES (a node removed
from the fleet) is deleted by RabbitMQ. Changing either constant means deleting the existing
``<name>.<node>`` queues first (RabbitMQ refuses to redeclare a queue with other arguments).

Replies. A broadcast task has one id and many executions, so a result backend keeps one answer only
(celery issue #4149). A caller that wants every answer declares a reply queue named ``fleet.reply.*``
and puts its name in the message header REPLY_HEADER; each execution publishes its own answer
(reply()) there through the default exchange, tagged with its node name. Callers send with
``ignore_result=True``.

Run once. The ledger records each broadcast task id a node ran (``running`` then ``done``), so a
redelivered or re-sent message with the same id is not run twice on that node: it is answered with
status ``skipped``. A ``running`` record left by a dead process (worker lost) is taken over, so an
interrupted run is retried (maintenance tasks are idempotent and acknowledged late).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import time
import traceback as _tb
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from celery.exceptions import Ignore
from kombu import Exchange
from kombu.common import Broadcast

from celery_app.base import IdempotentTask

logger = logging.getLogger(__name__)

REPLY_HEADER = "fleet_reply_to"
REPLY_PREFIX = "fleet.reply."  # replies go only to queues named so, never to a task queue
QUEUE_MESSAGE_TTL = 24 * 3600  # seconds a broadcast waits in a down node's queue, at most
QUEUE_EXPIRES = 7 * 24 * 3600  # seconds before RabbitMQ deletes a node queue nobody consumes
LEDGER_RETENTION = 2 * QUEUE_MESSAGE_TTL  # seconds a ledger record is kept
LEDGER_DIR = "broadcast-ledger"
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}\Z")
_TRACEBACK_LIMIT = 4000


def broadcast_exchange(name: str) -> Exchange:
    """The durable fanout exchange behind broadcast queue name."""
    return Exchange(name, type="fanout", durable=True)


def broadcast_queue(name: str, node: str | None = None, queue_type: str = "classic") -> Broadcast:
    """Broadcast queue name: the node's durable queue (of queue_type), or (node None) the sender-side routing entry."""
    if node is None:
        # Only used to route: Celery never declares Broadcast queues when it sends.
        return Broadcast(name=name, queue=name, routing_key=name, exchange=broadcast_exchange(name))
    return Broadcast(
        name=name,
        queue=f"{name}.{node}",
        routing_key=name,
        exchange=broadcast_exchange(name),
        durable=True,
        auto_delete=False,
        queue_arguments={"x-message-ttl": QUEUE_MESSAGE_TTL * 1000, "x-expires": QUEUE_EXPIRES * 1000,
                         **({"x-queue-type": "quorum"} if queue_type == "quorum" else {})},
    )


def is_broadcast(queue: Any) -> bool:
    """Whether queue is a broadcast queue (sender-side or per-node)."""
    return isinstance(queue, Broadcast)


def reply(
    *, task_id: str, task: str, node: str, status: str,
    result: Any = None, error: str | None = None, traceback: str | None = None, runtime: float | None = None,
) -> dict[str, Any]:
    """The answer of one execution; status is ok, failed or skipped."""
    answer = {
        "task_id": task_id, "task": task, "node": node, "hostname": socket.gethostname(),
        "pid": os.getpid(), "status": status, "finished_at": time.time(),
    }
    if runtime is not None:
        answer["runtime"] = round(runtime, 6)
    if result is not None:
        try:
            json.dumps(result)
            answer["result"] = result
        except (TypeError, ValueError) as exc:
            answer.update(status="failed", error=f"result is not JSON-serializable: {exc}")
    if error is not None:
        answer["error"] = error
    if traceback:
        answer["traceback"] = traceback[-_TRACEBACK_LIMIT:]
    return answer


def describe_error(exc: BaseException) -> str:
    """One line naming the exception and its message."""
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class Claim:
    """Whether this execution may run the task id (run) and, when not, why (reason)."""

    run: bool
    reason: str = ""


class Ledger:
    """Per-node record of broadcast task ids already run, in files under directory."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def _path(self, task_id: str) -> Path:
        name = task_id if _SAFE_ID.match(task_id) else hashlib.sha256(task_id.encode()).hexdigest()
        return self.directory / name

    def _write(self, path: Path, record: dict[str, Any]) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, path)

    def claim(self, task_id: str) -> Claim:
        """Claim task_id for this process unless it ran, or runs in a live process, already."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        path = self._path(task_id)
        record = {"state": "running", "pid": os.getpid(), "created": _process_created(os.getpid()), "at": time.time()}
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except FileExistsError:
            previous = self._read(path)
            if previous.get("state") == "done":
                return Claim(False, "already ran on this node")
            if _alive(previous.get("pid"), previous.get("created")):
                return Claim(False, "already running on this node")
            self._write(path, record)  # the previous run's process died: retry
            return Claim(True, "previous run was interrupted")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(record))
        return Claim(True)

    def done(self, task_id: str) -> None:
        """Record task_id as run, and forget records older than LEDGER_RETENTION."""
        self._write(self._path(task_id), {"state": "done", "pid": os.getpid(), "at": time.time()})
        self.prune(time.time() - LEDGER_RETENTION)

    def state(self, task_id: str) -> str | None:
        """running, done, or None when task_id is unknown here."""
        return self._read(self._path(task_id)).get("state")

    def prune(self, before: float) -> None:
        """Remove records last written before the epoch time before."""
        for entry in self.directory.iterdir():
            try:
                if entry.stat().st_mtime < before:
                    entry.unlink()
            except OSError:
                pass

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}


def _process_created(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _alive(pid: Any, created: Any) -> bool:
    if not isinstance(pid, int):
        return False
    current = _process_created(pid)
    return current is not None and (created is None or abs(current - created) < 1)


class BroadcastTask(IdempotentTask):
    """Base of maintenance tasks: run once per node per task id, and answer the caller's reply queue."""

    ignore_result = False

    def _ledger(self) -> Ledger | None:
        directory = Path(self.app.conf.fleet_state_dir) / LEDGER_DIR / self.request.hostname
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o750)
            return Ledger(directory)
        except OSError as exc:
            logger.warning("broadcast ledger unavailable (%s): runs are not deduplicated", exc)
            return None

    def _reply_to(self) -> str | None:
        request = self.request
        return getattr(request, REPLY_HEADER, None) or (request.headers or {}).get(REPLY_HEADER)

    def _send_reply(self, answer: dict[str, Any]) -> None:
        reply_to = self._reply_to()
        if not reply_to:
            return
        if not str(reply_to).startswith(REPLY_PREFIX):
            logger.warning("broadcast reply to %r refused: not a %s* queue", reply_to, REPLY_PREFIX)
            return
        try:
            with self.app.producer_or_acquire() as producer:
                producer.publish(
                    answer, exchange="", routing_key=reply_to, serializer="json",
                    delivery_mode=1, retry=True, retry_policy={"max_retries": 3},
                )
        except Exception:  # an answer lost must not fail the maintenance itself
            logger.exception("could not send the broadcast reply to %s", reply_to)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly or not request.id:
            return super().__call__(*args, **kwargs)
        base = {"task_id": request.id, "task": self.name, "node": request.hostname}
        ledger = self._ledger()
        claim = ledger.claim(request.id) if ledger else Claim(True)
        if not claim.run:
            logger.info("%s[%s] not run: %s", self.name, request.id, claim.reason)
            self._send_reply(reply(**base, status="skipped", result={"reason": claim.reason}))
            raise Ignore()
        started = time.monotonic()
        try:
            result = super().__call__(*args, **kwargs)
        except Exception as exc:
            if ledger:
                ledger.done(request.id)
            self._send_reply(reply(**base, status="failed", error=describe_error(exc), traceback=_tb.format_exc(),
                                   runtime=time.monotonic() - started))
            raise
        if ledger:
            ledger.done(request.id)
        self._send_reply(reply(**base, status="ok", result=result, runtime=time.monotonic() - started))
        return result
