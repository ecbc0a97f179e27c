"""The test fleets, each declared once: its inventory, how it is brought up, and one object for its calls."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import testinfra

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
FLEETCTL = BIN / "fleetctl"
SANDBOX_INVENTORY = ROOT / "playbooks" / "inventories" / "sandbox" / "hosts.yml"
FLEETS_DIR = ROOT / "tests" / "fleets"
# Generated when the fleet is first used (support.production): its vault password must stay out of git.
PRODUCTION_INVENTORY = ROOT / ".sandbox" / "test-inventories" / "production" / "hosts.yml"
GUARD = 1800  # seconds: against a hanging make or deploy, not a speed bound
# Host metric thresholds of fleetctl health relaxed: the sandbox hosts share this machine's kernel, load and disk
# (and `make test` runs two lanes of fleets at once), so a busy test machine is not what a test judges, except the
# tests about those thresholds.
RELAXED = ("--load-warn", "50", "--load-fail", "100", "--memory-warn", "99", "--memory-fail", "100",
           "--disk-warn", "99", "--disk-fail", "100")
os.environ.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))
# ansible-inventory, for testinfra's ansible:// hosts
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"


def fleet_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without CELERY_* overrides (the app tests point those at loopback), plain
    Ansible output, and extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")}
    return {**env, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", **(extra or {})}


def run(args: list[str], env: dict[str, str] | None = None, timeout: float = GUARD,
        merge: bool = False) -> subprocess.CompletedProcess:
    """args run from the repository root, output captured (stderr into stdout when merge: stderr is then "")."""
    done = subprocess.run(args, cwd=ROOT, text=True, env=env or fleet_env(), timeout=timeout, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT if merge else subprocess.PIPE)
    done.stderr = done.stderr or ""
    return done


def make(*args: str, check: bool = True, timeout: float = GUARD, env: dict[str, str] | None = None,
         merge: bool = False) -> subprocess.CompletedProcess:
    """A make target from the repository root, output captured; AssertionError on failure when check."""
    proc = run(["make", "--no-print-directory", *args], env=env, timeout=timeout, merge=merge)
    if check and proc.returncode != 0:
        raise AssertionError(f"make {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def sandbox_status() -> list[dict]:
    """`fleetctl sandbox status --json`: one row per sandbox host."""
    return json.loads(run([str(FLEETCTL), "sandbox", "status", "--json"]).stdout)


@dataclass(frozen=True)
class FleetSpec:
    """A fleet of the test suite: its inventory, whether it is deployed when first used, what it proves."""

    name: str
    inventory: Path
    deployed: bool = True  # False: its hosts are booted bare (the tests deploy what they need themselves)
    env: tuple[tuple[str, str], ...] = ()  # for every make, deploy and fleetctl call (SANDBOX_SUITE, vault)
    proves: str = ""
    # `make test` runs two lanes side by side (pytest-xdist workers): a lane's fleets one after another. The
    # lanes are balanced by the time their fleets took (the last line of a run's log tells).
    lane: int = 0
    prepare: str = ""  # "module:function" that writes a generated inventory before the fleet boots
    remove: str = ""  # "module:function" that removes it after the fleet is down

    def hook(self, which: str):
        """The prepare or remove function, or None."""
        target = getattr(self, which)
        if not target:
            return None
        module, function = target.split(":")
        return getattr(importlib.import_module(module), function)


FLEETS: dict[str, FleetSpec] = {spec.name: spec for spec in (
    FleetSpec("sandbox", SANDBOX_INVENTORY,
              proves="the default fleet of the README on Debian 12: deploy, units, health, broadcast, restarts, "
                     "hardening, Flower and Prometheus"),
    FleetSpec("bare", FLEETS_DIR / "bare" / "hosts.ini", deployed=False,
              proves="the sandbox itself: any inventory becomes systemd hosts; a powered-off host in health"),
    FleetSpec("cluster", FLEETS_DIR / "cluster" / "hosts.yml", deployed=False, lane=1,
              proves="a 3-node RabbitMQ 3 cluster with quorum queues on Debian 12, grown from one broker"),
    FleetSpec("trixie", FLEETS_DIR / "trixie" / "hosts.yml", env=(("SANDBOX_SUITE", "trixie"),), lane=1,
              proves="Debian 13: RabbitMQ 4 as a 3-node cluster, Python 3.13"),
    FleetSpec("redis", FLEETS_DIR / "redis" / "hosts.yml", lane=1,
              proves="a Redis result backend, priority and topic queues"),
    FleetSpec("tls", FLEETS_DIR / "tls" / "hosts.yml", deployed=False, lane=1,
              proves="a broker with the management plugin, then TLS only with peer verification"),
    FleetSpec("release", FLEETS_DIR / "release" / "hosts.yml", deployed=False, lane=1,
              proves="the operator's own app as releases: canary, stop, rollback"),
    FleetSpec("production", PRODUCTION_INVENTORY, deployed=False,
              env=(("ANSIBLE_VAULT_PASSWORD_FILE", str(PRODUCTION_INVENTORY.parent.with_suffix(".vault-pass"))),),
              prepare="support.production:write_inventory", remove="support.production:remove_inventory",
              proves="an unprivileged SSH user with sudo, checked host keys, a vaulted password"),
)}


@dataclass
class Fleet:
    """A sandbox fleet that is up: its make, deploy and fleetctl calls and a testinfra host per inventory host."""

    inventory: Path
    spec: FleetSpec | None = None
    deploy_output: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # boot, deploy (seconds), up (monotonic start)

    @classmethod
    def named(cls, name: str) -> Fleet:
        """The fleet of spec name (its calls; whether it is up is the pool's business)."""
        return cls(inventory=FLEETS[name].inventory, spec=FLEETS[name])

    @property
    def name(self) -> str:
        return self.spec.name if self.spec else self.inventory.parent.name

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return fleet_env({**dict(self.spec.env if self.spec else ()), **(extra or {})})

    def make(self, target: str, *args: str, inventory: Path | None = None, check: bool = False,
             timeout: float = GUARD, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """`make target INVENTORY=...` of this fleet (or of inventory, its hosts), stdout and stderr together."""
        return make(target, f"INVENTORY={inventory or self.inventory}", *args, check=check, timeout=timeout,
                    env=self.env(env), merge=True)

    def deploy(self, inventory: Path | None = None, check: bool = False, args: str = "",
               timeout: float = GUARD) -> subprocess.CompletedProcess:
        """`make deploy` of this fleet (or of inventory, written for its hosts); CHECK=1 when check."""
        extra = (["CHECK=1"] if check else []) + ([f"ANSIBLE_ARGS={args}"] if args else [])
        return self.make("deploy", *extra, inventory=inventory, timeout=timeout)

    def fleetctl(self, verb: str, *args: str, inventory: Path | None = None, timeout: float = 600,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """`fleetctl verb --inventory ... args` (verb may be two words, "broker restart"), stdout and stderr apart."""
        return run([str(FLEETCTL), *verb.split(), "--inventory", str(inventory or self.inventory), *args],
                   env=self.env(env), timeout=timeout)

    def host(self, name: str):
        """A testinfra host of the fleet (through Ansible: the inventory's connection variables)."""
        return testinfra.get_host(f"ansible://{name}?ansible_inventory={self.inventory}")

    def hosts(self) -> dict[str, dict]:
        """host -> its `fleetctl sandbox status` row, for this fleet's hosts."""
        rel = os.path.relpath(self.inventory, ROOT)
        return {row["host"]: row for row in sandbox_status() if row["inventory"] == rel}

    def ssh(self, host: str, command: str, timeout: float = 150, check: bool = True) -> str:
        """command run as root on a host of the fleet over plain SSH (its sandbox connection variables), its stdout."""
        from support.deploy import ssh

        return ssh(self.inventory, host, command, timeout, check)

    def sandbox(self, verb: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """`fleetctl sandbox verb args --inventory ...` (poweroff, poweron, status of this fleet's hosts)."""
        return self.fleetctl(f"sandbox {verb}", *args, timeout=timeout)

    def describe(self) -> str:
        """'fleet NAME (inventory): host address, ...' for a failure report."""
        rows = self.hosts()
        hosts = ", ".join(f"{h} {r.get('address', '?')} {r.get('state', '')}".strip() for h, r in sorted(rows.items()))
        return f"fleet {self.name} ({os.path.relpath(self.inventory, ROOT)}): {hosts or 'no host up'}"

    def collect_logs(self, directory: Path) -> list[Path]:
        """Each host's journal (last 400 lines) and Celery logs, into directory/<host>.log; the files written."""
        directory.mkdir(parents=True, exist_ok=True)
        script = ("journalctl --no-pager -n 400 -o short-iso 2>&1; for f in /var/log/celery/*.log; do "
                  "[ -f \"$f\" ] && echo \"== $f\" && tail -n 200 \"$f\"; done; true")
        written = []
        for name in sorted(self.hosts()):
            try:
                text = self.ssh(name, script, timeout=60, check=False)
            except (subprocess.SubprocessError, OSError, KeyError) as error:
                text = f"logs not collected: {error}"
            path = directory / f"{name}.log"
            path.write_text(text)
            written.append(path)
        return written


class FleetPool:
    """The session's fleets: each brought up (and deployed) on first use, brought down after its last test."""

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.up: dict[str, Fleet] = {}
        self.failed: dict[str, str] = {}  # name -> why it could not be brought up (raised again to each user)
        self.held: dict[str, dict[str, float]] = {}  # name -> boot, deploy, held (seconds), hosts

    def get(self, name: str) -> Fleet:
        """The fleet name, up (and deployed when its spec says so)."""
        if name in self.failed:
            raise AssertionError(self.failed[name])
        if name in self.up:
            return self.up[name]
        spec = FLEETS[name]
        fleet = Fleet(inventory=spec.inventory, spec=spec)
        if prepare := spec.hook("prepare"):
            prepare()
        start = time.monotonic()
        fleet.timings["up"] = start
        booted = fleet.make("sandbox-up")
        if booted.returncode != 0:
            self.failed[name] = f"fleet {name}: make sandbox-up failed ({booted.returncode}):\n{booted.stdout[-5000:]}"
            raise AssertionError(self.failed[name])
        fleet.timings["boot"] = time.monotonic() - start
        if spec.deployed:
            start = time.monotonic()
            done = fleet.deploy()
            fleet.timings["deploy"] = time.monotonic() - start
            fleet.deploy_output = done.stdout
            if done.returncode != 0:
                self.up[name] = fleet  # its logs can be collected, and it is brought down
                self.failed[name] = f"fleet {name}: the cold deploy failed ({done.returncode}):\n{done.stdout[-5000:]}"
                raise AssertionError(self.failed[name])
        self.up[name] = fleet
        return fleet

    def down(self, name: str) -> None:
        """Bring fleet name down (unless kept) and record how long it was held."""
        fleet = self.up.pop(name, None)
        if fleet is None:
            return
        held = time.monotonic() - fleet.timings["up"]
        self.held[name] = {"boot": fleet.timings.get("boot", 0.0), "deploy": fleet.timings.get("deploy", 0.0),
                           "held": held, "hosts": float(len(fleet.hosts()))}
        if not self.keep:
            fleet.make("sandbox-down")
            if remove := fleet.spec.hook("remove"):
                remove()

    def close(self) -> None:
        for name in list(self.up):
            self.down(name)

    def summary(self) -> list[str]:
        """One line per fleet held this session: hosts, boot, cold deploy and total time held."""
        return [f"fleet {name:<10} {int(t['hosts'])} hosts  boot {t['boot']:6.1f} s  cold deploy "
                + (f"{t['deploy']:6.1f} s" if t["deploy"] else "     - ") + f"  held {t['held']:7.1f} s"
                for name, t in self.held.items()]


def wait_active(app, node: str, task_id: str, within: float = 30) -> None:
    """Wait (a guard, not a speed bound) until node runs the task task_id."""
    deadline = time.monotonic() + within
    while True:
        active = (app.control.inspect(destination=[node], timeout=1, limit=1).active() or {}).get(node) or []
        if any(task["id"] == task_id for task in active):
            return
        assert time.monotonic() < deadline, f"{task_id} never started on {node}"
        time.sleep(0.3)


def safe_name(nodeid: str) -> str:
    """A test id (its file's name and the test's) as a directory name."""
    path, _, test = nodeid.partition("::")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{Path(path).stem}-{test}")[:150]
