"""Helpers of the app tests: a local RabbitMQ, real worker processes, throwaway inventories."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
FLEETCTL = REPO / ".venv" / "bin" / "fleetctl"

# Never read this machine's /etc/conf.d/celery; set before celery_app is imported anywhere.
os.environ["CELERY_ENV_FILE"] = "/nonexistent/celery-env"
os.environ.pop("CELERY_BROADCAST_QUEUES", None)

PYTHON = sys.executable
BROADCAST_QUEUES = ("broadcast", "urgent")
READY_WITHIN = 60  # seconds; a guard against hanging, not a speed assertion

# The test fleet: host -> {node name: queues}. Every node also consumes the broadcast queues.
FLEET = {
    "host-a": {"calc": ["calc"], "reports": ["reports"]},
    "host-b": {"celery": ["celery"]},
}
LATE = ("host-c", "late", ["late"])  # a node the host-down test stops and starts


def _rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {args[0]} failed: {done.stderr.strip()}")
    return done.stdout


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("CELERY", "CELERYD", "CELERYBEAT"))}


@dataclass
class HostDirs:
    """The per-host paths a worker host would have (state, heartbeat, logs)."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def heartbeat(self) -> Path:
        return self.root / "state" / "heartbeat"

    @property
    def logs(self) -> Path:
        return self.root / "log"


@dataclass
class WorkerNode:
    """A real ``celery worker`` process standing for one node of one host."""

    name: str
    host: str
    queues: list[str]
    dirs: HostDirs
    broker_url: str
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def full_name(self) -> str:
        return f"{self.name}@{self.host}"

    @property
    def logfile(self) -> Path:
        return self.dirs.root / f"{self.name}.worker.log"

    def env(self) -> dict[str, str]:
        return {
            **_clean_env(),
            "CELERY_ENV_FILE": "/nonexistent/celery-env",
            "CELERY_BROKER_URL": self.broker_url,
            "CELERY_BROADCAST_QUEUES": ",".join(BROADCAST_QUEUES),
            "CELERY_STATE_DIR": str(self.dirs.state),
            "CELERY_HEARTBEAT_FILE": str(self.dirs.heartbeat),
            "CELERY_LOG_DIR": str(self.dirs.logs),
        }

    def start(self) -> None:
        for directory in (self.dirs.state, self.dirs.logs):
            directory.mkdir(parents=True, exist_ok=True)
        queues = ",".join([*self.queues, *BROADCAST_QUEUES])
        command = [
            PYTHON, "-m", "celery", "-A", "celery_app", "worker", "-n", self.full_name, "-Q", queues,
            "-c", "1", "-P", "prefork", "-l", "INFO", "-f", str(self.logfile), "--without-gossip", "--without-mingle",
        ]
        with open(self.dirs.root / f"{self.name}.stdout", "ab") as out:
            self.process = subprocess.Popen(command, cwd=self.dirs.root, env=self.env(), stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # warm shutdown
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""


def wait_ready(app, nodes: list[WorkerNode]) -> None:
    """Return once every node answers a ping; fail with the log of a node that died or never answered."""
    waiting = {node.full_name: node for node in nodes}
    deadline = time.monotonic() + READY_WITHIN
    while waiting:
        for node in waiting.values():
            if node.process.poll() is not None:
                pytest.fail(f"worker {node.full_name} exited ({node.process.returncode}):\n{node.log()[-3000:]}")
        for reply in app.control.ping(destination=list(waiting), timeout=0.5) or []:
            for name in reply:
                waiting.pop(name, None)
        if waiting and time.monotonic() > deadline:
            names = ", ".join(waiting)
            pytest.fail(f"workers not ready: {names}:\n{next(iter(waiting.values())).log()[-3000:]}")


def host_dirs(fleet_root: Path, host: str) -> HostDirs:
    return HostDirs(fleet_root / host)


def write_inventory(directory: Path, hosts: dict[str, dict[str, list[str]]]) -> Path:
    """An inventory (hosts.yml + group_vars/all.yml) with the celery_workers hosts given."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "group_vars").mkdir(exist_ok=True)
    (directory / "group_vars" / "all.yml").write_text(
        "celery_broadcast_queues: " + json.dumps(list(BROADCAST_QUEUES)) + "\n")
    workers = {
        host: {"celery_worker_nodes": [{"name": n, "queues": q, "concurrency": 1} for n, q in nodes.items()]}
        for host, nodes in hosts.items()
    }
    inventory = {"all": {"children": {
        "rabbitmq": {"hosts": {"broker": {"ansible_host": "127.0.0.1"}}},
        "celery_workers": {"hosts": workers},
        "celery_beat": {"hosts": {next(iter(hosts)): {}}},
    }}}
    path = directory / "hosts.yml"
    path.write_text(json.dumps(inventory, indent=2))  # JSON is valid YAML
    return path


