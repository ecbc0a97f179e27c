"""Sandboxed celery units on the deployed sandbox fleet: exposure 2.0 or less, and every task still works."""
from __future__ import annotations

import json
import re
import time

import pytest

from support.deploy import deploy, pinged_nodes, sandbox_inventory, write_inventory
from support.fleet import make

MAX_EXPOSURE = 2.0
# The celery units of each worker host of the sandbox inventory: concurrency of each node unit.
NODES = {"worker1": {"calc": 2, "reports": 1}, "worker2": {"celery": 2}}
BEAT_HOST = "worker2"
UNITS = [(host, unit) for host, nodes in NODES.items()
         for unit in ["celery.service", *(f"celery@{name}.service" for name in nodes)]
         + (["celerybeat.service"] if host == BEAT_HOST else [])]
# Units of the fleet's other services, held to the same bound: Flower (group flower of the sandbox).
OTHER_UNITS = [("worker2", "flower.service")]
# The fleet metrics of each worker host (group monitoring of the sandbox): a oneshot service and its timer.
METRICS_UNITS = ["celery-fleet-metrics.service", "celery-fleet-metrics.timer"]
# "→ Overall exposure level for celery@calc.service: 1.1 OK :-)" (the arrow depends on the locale).
_EXPOSURE = re.compile(r"Overall exposure level for (?P<unit>\S+): (?P<score>\d+\.\d+)")
SETTLE = 120  # seconds for nodes to answer ping again after a restart (guard)


# Helpers.

def _exposure(output: str) -> dict[str, float]:
    """unit -> overall exposure, from `systemd-analyze security` output."""
    return {m["unit"]: float(m["score"]) for m in _EXPOSURE.finditer(output)}


def _show(host, unit: str, *properties: str) -> dict[str, str]:
    """Properties of a loaded unit (`systemctl show`)."""
    out = host.check_output(f"systemctl show {' '.join(f'-p {p}' for p in properties)} {unit}")
    return dict(line.split("=", 1) for line in out.splitlines())


def _celery_processes(host) -> dict[int, str]:
    """PID -> systemd unit of every process of the user celery on the host."""
    rows = [line.split() for line in host.check_output("ps -u celery -o pid=,unit=").splitlines()]
    return {int(row[0]): row[1] if len(row) > 1 else "" for row in rows}


def _unit_pids(host, unit: str) -> set[int]:
    """PIDs of the unit's processes."""
    return {pid for pid, owner in _celery_processes(host).items() if owner == unit}


def _wait_replaced(host, name: str, old: set[int]) -> None:
    """Bounded wait until every node unit of the host is active with a new main process that answers ping.

    (`systemctl reload celery` returns before the nodes' own reloads, which it queues, are done.)
    """
    units = [f"celery@{node}.service" for node in NODES[name]]
    nodes = [f"{node}@{name}" for node in NODES[name]]
    deadline = time.monotonic() + SETTLE

    def replaced() -> bool:
        shown = [_show(host, unit, "ActiveState", "MainPID") for unit in units]
        return all(s["ActiveState"] == "active" and int(s["MainPID"]) not in old for s in shown)

    while not (replaced() and pinged_nodes(host, nodes) == set(nodes)):
        assert time.monotonic() < deadline, f"{nodes} were not replaced and answering ping within {SETTLE} s"
        time.sleep(2)


def _broadcast(task: str, args: dict) -> dict:
    """`make broadcast` answers, node -> answer."""
    proc = make("broadcast", f"TASK={task}", f"ARGS={json.dumps(args)}", "FORMAT=json", check=False)
    outcome = json.loads(proc.stdout)
    assert outcome["missing"] == [], proc.stdout + proc.stderr
    return {node: answer for nodes in outcome["hosts"].values() for node, answer in nodes.items()}


@pytest.fixture
def rotated_logs(deployed_fleet):
    """A function placing an old rotated log, owned by celery, in a new directory on every worker host."""
    made = []

    def place(directory: str) -> str:
        for name in NODES:
            script = (f"mkdir -p {directory} && head -c 100 /dev/zero > {directory}/old.log.1 && "
                      f"touch -d '30 days ago' {directory}/old.log.1 && chown -R celery:celery {directory}")
            assert deployed_fleet.host(name).run(script).rc == 0
        made.append(directory)
        return directory

    yield place
    for name in NODES:
        deployed_fleet.host(name).run(f"rm -rf {' '.join(made)}")


# Exposure.

def test_every_celery_unit_of_each_host_is_measured(deployed_fleet):
    for name in NODES:
        loaded = deployed_fleet.host(name).check_output(
            "systemctl list-units --all --plain --no-legend 'celery*' | cut -d' ' -f1")
        assert sorted(loaded.split()) == sorted([unit for host, unit in UNITS if host == name] + METRICS_UNITS)


@pytest.mark.parametrize("name", sorted(NODES))
def test_fleet_metrics_service_exposure_is_at_most_2(deployed_fleet, name):
    host = deployed_fleet.host(name)
    unit = METRICS_UNITS[0]
    assert host.service(METRICS_UNITS[1]).is_running  # the timer; the service runs and exits
    out = host.check_output(f"systemd-analyze security {unit} --no-pager")
    assert _exposure(out)[unit] <= MAX_EXPOSURE, out


@pytest.mark.parametrize("name, unit", UNITS + OTHER_UNITS)
def test_loaded_unit_exposure_is_at_most_2(deployed_fleet, name, unit):
    host = deployed_fleet.host(name)
    assert host.service(unit).is_running
    out = host.check_output(f"systemd-analyze security {unit} --no-pager")
    score = _exposure(out)[unit]
    assert score <= MAX_EXPOSURE, out


def test_flower_runs_without_capabilities_new_privileges_or_unfiltered_system_calls(deployed_fleet):
    host = deployed_fleet.host("worker2")
    pids = {int(pid) for pid in host.check_output("ps -u flower -o pid=").split()}
    assert pids
    for pid in pids:
        status = dict(re.findall(r"^(\w+):\s*(.*)$", host.check_output(f"cat /proc/{pid}/status"), re.MULTILINE))
        assert (status["CapBnd"], status["CapEff"]) == ("0" * 16, "0" * 16), pid
        assert (status["NoNewPrivs"], status["Seccomp"]) == ("1", "2"), pid


def test_beat_runs_in_the_same_sandbox_as_the_nodes(deployed_fleet):
    host = deployed_fleet.host(BEAT_HOST)
    sandbox = ("User", "CapabilityBoundingSet", "UMask", "ProtectSystem", "ReadWritePaths", "ProtectHome",
               "PrivateTmp", "PrivateDevices", "PrivateUsers", "ProtectProc", "RestrictAddressFamilies",
               "MemoryDenyWriteExecute", "SystemCallFilter", "SystemCallArchitectures", "RestrictNamespaces")
    node = _show(host, "celery@celery.service", *sandbox)
    assert _show(host, "celerybeat.service", *sandbox) == node
    assert node["ProtectSystem"] == "strict" and node["CapabilityBoundingSet"] == ""


@pytest.mark.parametrize("name", sorted(NODES))
def test_workers_run_without_capabilities_new_privileges_or_unfiltered_system_calls(deployed_fleet, name):
    host = deployed_fleet.host(name)
    units = [f"celery@{node}.service" for node in NODES[name]] + (["celerybeat.service"] if name == BEAT_HOST else [])
    for unit in units:
        pids = _unit_pids(host, unit)
        assert pids, unit
        for pid in pids:
            status = dict(re.findall(r"^(\w+):\s*(.*)$", host.check_output(f"cat /proc/{pid}/status"), re.MULTILINE))
            assert (status["CapBnd"], status["CapEff"]) == ("0" * 16, "0" * 16), (unit, pid)
            assert (status["NoNewPrivs"], status["Seccomp"]) == ("1", "2"), (unit, pid)


# What the workers still do under the sandbox.

def test_host_report_gives_the_host_figures_and_the_node_processes(deployed_fleet):
    answers = _broadcast("host_report", {})
    for name, nodes in NODES.items():
        host = deployed_fleet.host(name)
        mem_total = int(host.check_output("awk '/^MemTotal:/ {print $2}' /proc/meminfo")) * 1024
        root_size = int(host.check_output("df -B1 --output=size / | tail -1"))
        for node, concurrency in nodes.items():
            answer = answers[f"{node}@{name}"]
            assert answer["status"] == "ok", answer
            report = answer["result"]
            assert report["hostname"] == name and report["uptime_s"] > 0 and report["cpu_count"] >= 1
            assert len(report["load"]) == 3
            assert report["memory"]["total"] == mem_total
            assert report["disk"]["/"]["total"] == root_size and report["disk"]["/var/log"]
            processes = {p["pid"]: p["role"] for p in report["celery_processes"]}
            assert set(processes) == _unit_pids(host, f"celery@{node}.service")
            assert sorted(processes.values()) == ["main"] + ["pool"] * concurrency


def test_node_runs_a_task_and_logs_it_with_its_pid_file_naming_its_main_process(deployed_fleet):
    sender = deployed_fleet.host(BEAT_HOST)
    script = ("cd /tmp && /opt/celery/venv/bin/python -c 'import json; from celery_app.tasks.examples import whoami; "
              "r = whoami.apply_async(queue=\"calc\"); print(json.dumps([r.id, r.get(timeout=60)]))'")
    task_id, ran = json.loads(sender.check_output(script).splitlines()[-1])
    assert ran["node"] == "calc@worker1"
    worker = deployed_fleet.host("worker1")
    assert worker.run(f"grep -q {task_id} /var/log/celery/calc.log").rc == 0
    main_pid = _show(worker, "celery@calc.service", "MainPID")["MainPID"]
    assert worker.file("/run/celery/calc.pid").content_string.strip() == main_pid


def test_beat_and_nodes_write_the_heartbeat_state(deployed_fleet):
    """Beat sends heartbeat every 30 s; the node that runs it writes /var/lib/celery/heartbeat on its host."""
    hosts = [deployed_fleet.host(name) for name in NODES]

    def newest() -> float:
        epochs = [json.loads(h.run("cat /var/lib/celery/heartbeat").stdout or "{}").get("epoch", 0) for h in hosts]
        return max(epochs)

    before = newest()
    deadline = time.monotonic() + 120
    while newest() <= before:
        assert time.monotonic() < deadline, "no node wrote a new heartbeat within 120 s"
        time.sleep(3)


def test_task_cannot_write_outside_the_writable_directories(rotated_logs):
    directory = rotated_logs("/srv/celery-sandbox-ro")
    answers = _broadcast("cleanup_logs", {"days": 7, "directory": directory})
    for node, answer in answers.items():
        assert answer["result"]["errors"] == ["old.log.1: Read-only file system"], (node, answer)
        assert answer["result"]["removed"] == []


def test_read_write_paths_let_tasks_write_there(rotated_logs, tmp_path):
    """celery_worker_read_write_paths on worker2: its node may delete there; worker1's nodes still may not."""
    directory = rotated_logs("/srv/celery-sandbox-rw")
    inventory = sandbox_inventory()
    worker2 = inventory["all"]["children"]["celery_workers"]["hosts"]
    worker2["worker2"] = {**(worker2["worker2"] or {}), "celery_worker_read_write_paths": [directory, "/srv/none"]}
    try:
        run = deploy(write_inventory(tmp_path, inventory))
        assert run.returncode == 0, run.stdout[-3000:]
        answers = _broadcast("cleanup_logs", {"days": 7, "directory": directory})
        assert answers["celery@worker2"]["result"]["removed"] == ["old.log.1"]
        for node in ("calc@worker1", "reports@worker1"):
            assert answers[node]["result"]["errors"] == ["old.log.1: Read-only file system"]
    finally:
        restored = deploy()
        assert restored.returncode == 0, restored.stdout[-3000:]


@pytest.mark.parametrize("action", ["restart", "reload"])
def test_systemctl_restart_and_reload_leave_no_stray_process(deployed_fleet, action):
    """restart: systemd stops and starts every node; reload: `celery multi restart` of each node."""
    name = "worker1"
    host = deployed_fleet.host(name)
    before = _celery_processes(host)
    assert host.run(f"systemctl {action} celery").rc == 0
    _wait_replaced(host, name, set(before))
    after = _celery_processes(host)
    assert not set(before) & set(after)
    units = {f"celery@{node}.service": concurrency for node, concurrency in NODES[name].items()}
    assert sorted(after.values()) == sorted(unit for unit, concurrency in units.items() for _ in range(1 + concurrency))
    for node in NODES[name]:
        main_pid = _show(host, f"celery@{node}.service", "MainPID")["MainPID"]
        assert host.file(f"/run/celery/{node}.pid").content_string.strip() == main_pid
