"""The sandbox fleet: any inventory becomes real systemd hosts reached over SSH."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fleetctl import sandbox
from support.fleet import FLEETS, ROOT, Fleet, make

pytestmark = pytest.mark.fleet("bare")
SANDBOX_INVENTORY = FLEETS["bare"].inventory
HOSTS = ["mq1", "node-a", "node-b", "watch1"]


def _fleet() -> sandbox.Fleet:
    fid = sandbox.fleet_id(SANDBOX_INVENTORY)
    return next(f for f in sandbox.load_fleets() if f.fid == fid)


def _settled_state(host) -> str:
    """`systemctl is-system-running` once boot has finished (bounded wait, no timing assert)."""
    deadline = time.monotonic() + 60
    while True:
        state = host.run("systemctl is-system-running").stdout.strip()
        if state not in ("starting", "initializing") or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


def _kernel_leftovers(fid: str, pid_namespaces: set[str]) -> list[str]:
    """Everything of a fleet the kernel still holds: processes, links, mounts, proxy."""
    left = []
    for pid in sandbox._pids():
        try:
            ns = os.readlink(f"/proc/{pid}/ns/pid")
        except OSError:
            continue
        if ns in pid_namespaces:
            left.append(f"process {pid} in a sandbox PID namespace")
    links = os.listdir("/sys/class/net")
    left += [f"link {link}" for link in links if link == f"sbr{fid}" or link.startswith(f"vb-sb{fid[:6]}")]
    mounts = Path("/proc/mounts").read_text()
    left += [f"mount {line}" for line in mounts.splitlines() if str(ROOT / ".sandbox") in line]
    left += [f"nspawn {pid}" for pid in sandbox.nspawn_pids(f"sb{fid[:6]}-").values()]
    left += [f"proxy {pid}" for pid in sandbox._proxy_pids(sandbox.FLEETS_DIR / fid / "proxy.conf")]
    left += [f"cgroup {d}" for root in {d.parent for d in sandbox.cgroup_dirs("x")}
             for d in root.glob(f"sb{fid[:6]}-*")]
    return left


def test_every_host_runs_systemd_under_its_inventory_name(sandbox_fleet):
    for name in HOSTS:
        host = sandbox_fleet.host(name)
        assert host.run("cat /proc/1/comm").stdout.strip() == "systemd"
        assert _settled_state(host) in ("running", "degraded")
        assert host.run("hostname").stdout.strip() == name
        assert host.exists("python3") and host.service("ssh").is_running


def test_plain_ansible_reaches_every_host_with_no_extra_settings(sandbox_fleet):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    proc = subprocess.run([str(ROOT / ".venv/bin/ansible"), "all", "-i", str(SANDBOX_INVENTORY),
                           "-m", "ansible.builtin.ping"], cwd=ROOT, env=env, text=True, capture_output=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in HOSTS:
        assert f"{name} | SUCCESS" in proc.stdout


def test_hosts_have_no_route_out_but_reach_the_package_proxy(sandbox_fleet):
    fleet = _fleet()
    host = sandbox_fleet.host("node-a")
    assert "default" not in host.run("ip route").stdout
    probe = (f"python3 -c \"import socket; socket.create_connection(('{fleet.gateway}', "
             f"{sandbox.PROXY_PORT}), timeout=3)\"")
    assert host.run(probe).rc == 0
    assert host.run("getent hosts mq1").stdout.split()[0] == fleet.hosts["mq1"].address


def test_each_host_tracks_its_own_services_processes(sandbox_fleet):
    for name in HOSTS:
        host = sandbox_fleet.host(name)
        assert host.run("systemctl show -p MainPID --value ssh.service").stdout.strip() != "0"
        status = host.run("systemctl status ssh.service --no-pager")
        assert "Failed to dump process list" not in status.stdout + status.stderr
        assert "sshd" in status.stdout
    # Two hosts run a same-named forking service (no main PID to guess: two processes). When its
    # processes die on one host, that host's systemd sees its cgroup empty, whatever the other runs.
    start = 'systemd-run -q --unit=probe-fork -p Type=forking -p Restart=no sh -c "sleep 302 & sleep 303 &"'
    a, b = sandbox_fleet.host("node-a"), sandbox_fleet.host("node-b")
    assert a.run(start).rc == 0 and b.run(start).rc == 0
    try:
        assert a.run("pkill -9 -f 'sleep 30[23]'").rc == 0
        deadline = time.monotonic() + 10
        while a.run("systemctl is-active probe-fork.service").stdout.strip() == "active":
            assert time.monotonic() < deadline, "node-a's systemd did not notice its service died"
            time.sleep(0.2)
        assert b.run("systemctl is-active probe-fork.service").stdout.strip() == "active"
    finally:
        b.run("systemctl stop probe-fork.service")
        a.run("systemctl reset-failed probe-fork.service")


def test_second_sandbox_up_reboots_no_host(sandbox_fleet):
    before = {name: (row["pid1"], row["started"]) for name, row in sandbox_fleet.hosts().items()}
    make("sandbox-up", f"INVENTORY={SANDBOX_INVENTORY}")
    after = {name: (row["pid1"], row["started"]) for name, row in sandbox_fleet.hosts().items()}
    assert sorted(before) == HOSTS
    assert after == before


def test_sandbox_up_replaces_a_host_whose_container_died(sandbox_fleet):
    fleet = _fleet()
    inits = sandbox.container_inits()
    victim = inits[(fleet.fid, "watch1")]
    os.kill(victim, signal.SIGKILL)
    make("sandbox-up", f"INVENTORY={SANDBOX_INVENTORY}")
    rows = sandbox_fleet.hosts()
    assert all(row["state"] == "running" for row in rows.values())
    assert rows["watch1"]["pid1"] != victim
    assert sandbox_fleet.host("watch1").run("hostname").stdout.strip() == "watch1"


def _fleetctl_sandbox(verb: str, *args: str) -> subprocess.CompletedProcess:
    done = Fleet.named("bare").sandbox(verb, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_poweroff_cuts_a_host_and_poweron_boots_it_with_its_disk(sandbox_fleet):
    node = sandbox_fleet.host("node-b")
    assert node.run("echo kept > /var/tmp/disk-marker && rm -f /var/tmp/stopped-cleanly && sync").rc == 0
    # A unit whose stop writes a file: a clean shutdown runs it, a power cut does not.
    started = node.run("systemd-run --unit=probe-power --remain-after-exit "
                       "-p 'ExecStop=/bin/sh -c \"touch /var/tmp/stopped-cleanly; sync\"' /bin/true")
    assert started.rc == 0, started.stderr
    before = sandbox_fleet.hosts()["node-b"]["pid1"]

    assert "powered off" in _fleetctl_sandbox("poweroff", "node-b").stdout
    rows = sandbox_fleet.hosts()
    assert rows["node-b"]["state"] == "stopped"
    assert all(row["state"] == "running" for name, row in rows.items() if name != "node-b")
    assert "already off" in _fleetctl_sandbox("poweroff", "node-b").stdout

    assert "powered on with its disk" in _fleetctl_sandbox("poweron", "node-b").stdout
    rows = sandbox_fleet.hosts()
    assert rows["node-b"]["state"] == "running" and rows["node-b"]["pid1"] != before
    node = sandbox_fleet.host("node-b")  # the same host key: its known_hosts entry still holds
    assert node.run("cat /var/tmp/disk-marker").stdout.strip() == "kept"
    assert not node.file("/var/tmp/stopped-cleanly").exists
    assert _settled_state(node) in ("running", "degraded")
    assert "already on" in _fleetctl_sandbox("poweron", "node-b").stdout


def test_sandbox_down_after_an_interrupted_run_leaves_nothing(sandbox_fleet):
    fleet = _fleet()
    inits = {k: v for k, v in sandbox.container_inits().items() if k[0] == fleet.fid}
    namespaces = {os.readlink(f"/proc/{pid}/ns/pid") for pid in inits.values()}
    assert len(namespaces) == len(HOSTS)
    # An interrupted run: nspawn killed hard, its containers orphaned but still running.
    for pid in sandbox.nspawn_pids(f"sb{fleet.fid[:6]}-").values():
        os.kill(pid, signal.SIGKILL)
    make("sandbox-down", f"INVENTORY={SANDBOX_INVENTORY}")
    assert _kernel_leftovers(fleet.fid, namespaces) == []
    assert not (sandbox.FLEETS_DIR / fleet.fid).exists()
    assert not sandbox_fleet.hosts()


def _refused(inventory: Path, message: str) -> None:
    fid = sandbox.fleet_id(inventory)
    links_before = set(os.listdir("/sys/class/net"))
    proc = make("sandbox-up", f"INVENTORY={inventory}", check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    # No bridge (sbr<fid>) or veth (vb-sb<fid>-N) was made for it; the other lane's fleets may boot meanwhile.
    assert {link for link in set(os.listdir("/sys/class/net")) - links_before if fid[:6] in link} == set()
    assert not (sandbox.FLEETS_DIR / fid).exists()
    assert not sandbox.nspawn_pids(f"sb{fid[:6]}-")


@pytest.mark.parametrize("text, message", [
    ("all:\n  hosts:\n    [unclosed\n", "does not parse"),
    ("[workers]\nworker_1\n", "not a valid host name: 'worker_1'"),
    ("[workers]\n" + "".join(f"w{i}\n" for i in range(300)), "300 hosts, but the sandbox subnet holds at most 253"),
], ids=["unparsable", "bad-host-name", "too-many-hosts"])
def test_bad_inventory_is_refused_and_starts_nothing(tmp_path, text, message):
    inventory = tmp_path / ("hosts.yml" if text.startswith("all:") else "hosts.ini")
    inventory.write_text(text)
    _refused(inventory, message)


def test_missing_inventory_is_refused_and_starts_nothing(tmp_path):
    _refused(tmp_path / "nope.yml", "no such file")
