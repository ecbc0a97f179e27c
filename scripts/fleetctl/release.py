"""Releases of the operator's Celery app: built once on the controller, rolled out host by host, rolled back.

Build (controller): a wheel of the app (``celery_worker_app_source``: a project directory, a wheel or
an sdist), a wheel of the fleet's own package (``celery_app/``: loader, maintenance tasks, heartbeat),
and a wheelhouse of every dependency for the hosts' Python version and platform (``pip download``
with ``--python-version``/``--platform``; ``celery_worker_app_requirements`` pins them, hashes
honoured). When the controller runs the hosts' Python version, the release is installed into a
scratch virtualenv and ``celery_worker_app`` imported there before any host is touched.

Rollout (hosts, group celery_workers in inventory order; the first is the canary): the wheelhouse is
copied and installed with ``pip --no-index`` into ``/opt/celery/releases/<id>/venv``, then
``/opt/celery/current`` switches atomically (``previous`` keeps the release it replaced), the host's
nodes are drained and restarted (``fleetctl.restart``), and the gate runs: every node answers ping with
its queues, and the smoke task (``celery_worker_app_smoke_task``) succeeds on the host. A host that
fails its gate is switched back, restarted and verified; the rollout stops there. Hosts that have no
release yet (a fresh host: its nodes cannot run, so it serves nothing) go first, all at once, with no
drain; the hosts that serve follow one at a time, and none of them is touched when a fresh host
fails. Progress goes to ``on_event``; nothing here prints.
"""
from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fleetctl import restart as restarts
from fleetctl.errors import UsageError
from fleetctl.inventory import Fleet, Host, run_ansible_inventory, unwrap
from fleetctl.paths import CACHE_DIR, REPO_ROOT
from fleetctl.remote.ssh import connection, run_on_hosts

OK, FAIL, UNCHANGED, SKIPPED, PLANNED = "OK", "FAIL", "UNCHANGED", "SKIPPED", "PLANNED"
RELEASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
APP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_.]*)?\Z")
BASE = "/opt/celery"
RELEASES = f"{BASE}/releases"
DEFAULT_KEEP = 5
FLEET_DIST = "celery_fleet_app"
SMOKE_TIMEOUT = 120.0
INSTALL_TIMEOUT = 600.0
BUILD_TIMEOUT = 900.0

Listener = Callable[["Event"], None]


class ReleaseError(UsageError):
    """The release cannot be built or rolled out as asked: nothing was changed on any host."""


@dataclass(frozen=True)
class Event:
    """Progress: kind is build, check, host, install, switch, restart, gate, restore, prune (host None: the fleet)."""

    kind: str
    host: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AppConfig:
    """The inventory's application (celery_worker_app_*), the same for every worker host."""

    source: Path
    app: str
    requirements: Path | None = None
    smoke_name: str | None = None
    smoke_args: tuple = ()
    keep: int = DEFAULT_KEEP
    redis: bool = False


@dataclass(frozen=True)
class HostState:
    """What a worker host has: its current and previous release, installed releases, its Python."""

    current: str | None = None
    previous: str | None = None
    releases: tuple[str, ...] = ()  # complete ones, oldest first
    python: str = ""
    machine: str = ""
    libc: str = ""
    error: str | None = None


@dataclass(frozen=True)
class Build:
    """A built release for one Python version: its id, wheelhouse archive and the pins it holds."""

    release: str
    python: str
    directory: Path
    archive: Path
    pins: tuple[str, ...]
    checked: bool  # imported in a scratch virtualenv on the controller
    seconds: float = 0.0


@dataclass(frozen=True)
class HostRelease:
    """One worker host of the rollout."""

    host: str
    status: str  # OK (switched, gate passed), FAIL, UNCHANGED, SKIPPED (not reached), PLANNED (dry run)
    before: str | None = None
    after: str | None = None
    code: str = ""
    detail: str = ""
    seconds: Mapping[str, float] = field(default_factory=dict)  # install, restart, gate


@dataclass(frozen=True)
class Outcome:
    """The release, its builds and every worker host, in rollout order."""

    release: str
    action: str  # release or rollback
    hosts: tuple[HostRelease, ...]
    builds: tuple[Build, ...] = ()
    dry_run: bool = False
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return all(host.status != FAIL for host in self.hosts)

    @property
    def changed(self) -> tuple[str, ...]:
        return tuple(host.host for host in self.hosts if host.status in (OK, PLANNED))

    @property
    def stopped_at(self) -> tuple[str, ...]:
        return tuple(host.host for host in self.hosts if host.status == FAIL)


# Pure helpers.

def check_release_id(value: str, what: str = "VERSION") -> str:
    """value when it is a valid release id, else ReleaseError naming what."""
    if not RELEASE_ID.match(value or ""):
        raise ReleaseError(f"{what}: release id {value!r} must be 1-100 characters of [A-Za-z0-9._-], "
                           "starting with a letter or digit")
    return value


def app_config(hostvars: Mapping[str, Mapping[str, Any]], workers: Sequence[str], inventory: Path,
               redis: bool = False) -> AppConfig | None:
    """The inventory's application (None: the bundled celery_app), read from the first worker host."""
    if not workers:
        return None
    first = workers[0]
    variables = unwrap(dict(hostvars.get(first, {})))
    source = str(variables.get("celery_worker_app_source") or "").strip()
    if not source:
        return None

    def path(value: str) -> Path:
        candidate = Path(value).expanduser()
        return candidate if candidate.is_absolute() else (inventory.parent / candidate)

    app = str(variables.get("celery_worker_app") or "").strip()
    if not APP_NAME.match(app):
        raise ReleaseError(f"{first}: celery_worker_app {app!r} must be a module path with an optional "
                           "':attribute' (shop.celery:app)")
    source_path = path(source)
    if not source_path.exists():
        raise ReleaseError(f"{first}: celery_worker_app_source {source!r}: no such file or directory on the controller")
    requirements = variables.get("celery_worker_app_requirements") or None
    requirements_path = path(str(requirements)) if requirements else None
    if requirements_path is not None and not requirements_path.is_file():
        raise ReleaseError(f"{first}: celery_worker_app_requirements {requirements!r}: no such file on the controller")
    smoke = variables.get("celery_worker_app_smoke_task") or None
    name, args = (smoke.get("name"), tuple(smoke.get("args") or ())) if isinstance(smoke, Mapping) else (smoke, ())
    keep = variables.get("celery_worker_app_keep_releases", DEFAULT_KEEP)
    try:
        keep = int(keep)
    except (TypeError, ValueError):
        keep = 0
    if keep < 2:
        raise ReleaseError(f"{first}: celery_worker_app_keep_releases must be an integer of at least 2")
    return AppConfig(source=source_path, app=app, requirements=requirements_path,
                     smoke_name=str(name) if name else None, smoke_args=args, keep=keep, redis=redis)


def parse_state(text: str) -> HostState:
    """A HostState from the lines of STATE_SCRIPT."""
    values: dict[str, Any] = {"releases": []}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        value = value.strip()
        if key in ("current", "previous") and value:
            values[key] = value.rsplit("/", 1)[-1]
        elif key == "release" and value:
            values["releases"].append(value)
        elif key in ("python", "machine", "libc"):
            values[key] = value
    values["releases"] = tuple(values["releases"])
    return HostState(**values)


def prunable(state: HostState, keep: int) -> list[str]:
    """Releases beyond the keep newest (releases are oldest first); never the current or previous one."""
    protected = {state.current, state.previous}
    extra = [r for r in state.releases if r not in protected]
    room = max(0, keep - len([r for r in state.releases if r in protected]))
    return extra[:max(0, len(extra) - room)]


def platform_tags(machine: str, libc: str) -> list[str]:
    """pip --platform tags a host of this machine and glibc version runs (newest manylinux first)."""
    arch = machine or "x86_64"
    try:
        major, minor = (int(part) for part in libc.split(".")[:2])
    except ValueError:
        major, minor = 2, 17
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 16, -1)] if major == 2 else []
    legacy = ["manylinux2014", "manylinux2010", "manylinux1"] if arch in ("x86_64", "i686") else ["manylinux2014"]
    return tags + [f"{name}_{arch}" for name in legacy] + [f"linux_{arch}"]


def pins_of(wheels: Sequence[str]) -> tuple[str, ...]:
    """name==version of each wheel file name."""
    pins = []
    for name in sorted(wheels):
        parts = name[:-4].split("-") if name.endswith(".whl") else []
        if len(parts) >= 5:
            pins.append(f"{parts[0]}=={parts[1]}")
    return tuple(pins)


def wheel_digest(path: Path) -> str:
    """A digest of a wheel's contents (member names and bytes): the same for the same code, whenever built."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(path) as wheel:
        for name in sorted(wheel.namelist()):
            if name.endswith(".dist-info/RECORD"):
                continue
            digest.update(name.encode() + b"\0" + hashlib.sha256(wheel.read(name)).digest())
    return digest.hexdigest()


def default_release_id(app_wheel: str, digest: str) -> str:
    """<dist>-<version>-<digest prefix>, only of release-id characters."""
    parts = app_wheel[:-4].split("-")
    words = re.sub(r"[^A-Za-z0-9._-]", "_", f"{parts[0]}-{parts[1]}") if len(parts) >= 2 else "app"
    return f"{words}-{digest[:10]}"


# The fleet's own package as a wheel (celery_app/ of the repository), written directly: no build step.

def _fleet_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                  and p.suffix == ".py")


def write_fleet_wheel(directory: Path, source: Path = REPO_ROOT / "celery_app") -> Path:
    """A py3-none-any wheel of the fleet package (celery_app) in directory; reproducible (fixed times)."""
    files = {f"celery_app/{p.relative_to(source).as_posix()}": p.read_bytes() for p in _fleet_files(source)}
    digest = hashlib.sha256(b"".join(k.encode() + v for k, v in sorted(files.items()))).hexdigest()[:12]
    version = f"1.0+{digest}"
    info = f"{FLEET_DIST}-{version}.dist-info"
    files[f"{info}/METADATA"] = (f"Metadata-Version: 2.1\nName: {FLEET_DIST}\nVersion: {version}\n"
                                 "Summary: The fleet's part of every release: loader, maintenance tasks, heartbeat\n"
                                 "Requires-Dist: celery>=5.3\nRequires-Dist: psutil>=5\n").encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: fleetctl\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = [f"{name},sha256={_b64(hashlib.sha256(data).digest())},{len(data)}"
              for name, data in sorted(files.items())]
    files[f"{info}/RECORD"] = ("\n".join(record + [f"{info}/RECORD,,"]) + "\n").encode()
    path = directory / f"{FLEET_DIST}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in sorted(files.items()):
            member = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            member.external_attr = 0o644 << 16
            wheel.writestr(member, data, zipfile.ZIP_DEFLATED)
    return path


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# Controller-side build.

def _pip(args: Sequence[str], timeout: float = BUILD_TIMEOUT,
         python: str = sys.executable) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    try:
        return subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, 124, "", f"pip {args[0]} did not finish within {timeout:g} s")


def _tail(done: subprocess.CompletedProcess, lines: int = 15) -> str:
    text = (done.stderr.strip() or done.stdout.strip()).splitlines()
    return "\n".join(text[-lines:]) or f"exit {done.returncode}"


def build_root(inventory: Path) -> Path:
    """Where the releases of an inventory are built on the controller: .cache/releases/<inventory dir>/."""
    return CACHE_DIR / "releases" / Path(inventory).resolve().parent.name


_BUILD_LEFTOVERS = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", ".venv", ".tox")


def app_wheel(config: AppConfig, directory: Path) -> Path:
    """The app as a wheel in directory (built from a project or sdist; a wheel is copied)."""
    directory.mkdir(parents=True, exist_ok=True)
    if config.source.is_file() and config.source.suffix == ".whl":
        return Path(shutil.copy2(config.source, directory / config.source.name))
    source = config.source
    if source.is_dir():  # built from a copy: nothing lands in the operator's tree, no stale build/ is reused
        source = Path(shutil.copytree(source, directory.parent / "source", ignore=_BUILD_LEFTOVERS))
    done = _pip(["wheel", "--no-deps", "--quiet", "--wheel-dir", str(directory), str(source)])
    wheels = sorted(directory.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        raise ReleaseError(f"celery_worker_app_source {config.source}: the project does not build:\n{_tail(done)}")
    return wheels[0]


def source_digest(app: Path, fleet: Path, config: AppConfig) -> str:
    """What a release is made of: the two wheels' contents, the requirements, the redis extra, the -A value
    (checked to import when the release is built)."""
    digest = hashlib.sha256()
    for part in (wheel_digest(app), wheel_digest(fleet), config.requirements.read_text() if config.requirements else "",
                 "redis" if config.redis else "", config.app):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()


def _download(config: AppConfig, wheels: Sequence[Path], target: Path, state: HostState) -> None:
    python = state.python or "%d.%d" % sys.version_info[:2]
    nodot = python.replace(".", "")
    binary = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp",
              "--abi", f"cp{nodot}", "--abi", "abi3", "--abi", "none"]
    for tag in platform_tags(state.machine, state.libc):
        binary += ["--platform", tag]
    common = ["download", "--quiet", "--dest", str(target), *binary]
    redis = ["-r", str(REPO_ROOT / "celery_app" / "requirements-redis.txt")] if config.redis else []
    if config.requirements:
        done = _pip([*common, "-r", str(config.requirements)])
        if done.returncode != 0:
            raise ReleaseError(f"celery_worker_app_requirements {config.requirements}: pip download for Python "
                               f"{python} failed:\n{_tail(done)}")
        done = _pip([*common, "--no-deps", *map(str, wheels)])
    else:
        done = _pip([*common, *map(str, wheels), *redis])
    if done.returncode != 0:
        raise ReleaseError(f"celery_worker_app_source {config.source}: the dependencies do not resolve for Python "
                           f"{python} on {state.machine or 'x86_64'}:\n{_tail(done)}")


def _check_import(config: AppConfig, directory: Path, wheelhouse: Path) -> None:
    """Install the wheelhouse into a scratch virtualenv and import the app through the fleet's loader."""
    venv = directory / "check-venv"
    shutil.rmtree(venv, ignore_errors=True)
    done = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300)
    python = str(venv / "bin" / "python")
    if done.returncode == 0:
        done = _pip(["install", "--quiet", "--no-index", "--no-deps", *map(str, sorted(wheelhouse.glob("*.whl")))],
                    python=python)
    if done.returncode == 0:
        done = _pip(["check"], python=python)
        if done.returncode != 0:
            raise ReleaseError(f"celery_worker_app_source {config.source}: the release misses dependencies:\n"
                               f"{_tail(done)}")
    if done.returncode != 0:
        raise ReleaseError(f"the release does not install from its wheelhouse:\n{_tail(done)}")
    script = "from celery_app.loader import app; app.loader.import_default_modules(); print(app.main)"
    env = {key: value for key, value in os.environ.items() if not key.startswith("CELERY_")}
    env.update(CELERY_FLEET_APP=config.app, CELERY_ENV_FILE=os.devnull, PYTHONDONTWRITEBYTECODE="1")
    try:
        done = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=120, env=env, cwd="/")
    except subprocess.TimeoutExpired:
        raise ReleaseError(f"celery_worker_app {config.app!r}: importing it did not finish within 120 s") from None
    if done.returncode != 0:
        raise ReleaseError(f"celery_worker_app {config.app!r} does not import in the built release:\n{_tail(done)}")
    shutil.rmtree(venv, ignore_errors=True)


def build(config: AppConfig, state: HostState, root: Path, *, version: str | None = None,
          emit: Listener | None = None) -> Build:
    """The release of config for the Python and platform of state (built once, then reused from root)."""
    emit = emit or (lambda event: None)
    started = time.monotonic()
    python = state.python or "%d.%d" % sys.version_info[:2]
    scratch = root / ".scratch" / f"{os.getpid()}-{time.time_ns()}"
    try:
        app = app_wheel(config, scratch / "app")
        fleet = write_fleet_wheel(scratch / "app")
        digest = source_digest(app, fleet, config)
        release = check_release_id(version) if version else default_release_id(app.name, digest)
        directory = root / release / f"py{python}"
        marker = directory / "release.json"
        if marker.is_file():
            recorded = json.loads(marker.read_text())
            if recorded.get("digest") != digest:
                raise ReleaseError(f"VERSION: release {release} was built before from other content; "
                                   "give the changed app a new release id")
            emit(Event("build", None, {"release": release, "python": python, "cached": True}))
            return Build(release, python, directory, directory / "wheelhouse.tar", tuple(recorded["pins"]),
                         bool(recorded.get("checked")), time.monotonic() - started)
        shutil.rmtree(directory, ignore_errors=True)
        wheelhouse = directory / "wheelhouse"
        wheelhouse.mkdir(parents=True)
        _download(config, [app, fleet], wheelhouse, state)
        checked = python == "%d.%d" % sys.version_info[:2]
        if checked:
            emit(Event("check", None, {"release": release, "app": config.app}))
            _check_import(config, directory, wheelhouse)
        pins = pins_of([p.name for p in wheelhouse.glob("*.whl")])
        (wheelhouse / "requirements.lock").write_text("\n".join(pins) + "\n")
        info = {"release": release, "digest": digest, "python": python, "app": config.app, "pins": list(pins),
                "app_wheel": app.name, "checked": checked, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (wheelhouse / "release.json").write_text(json.dumps(info, indent=1) + "\n")
        with tarfile.open(directory / "wheelhouse.tar", "w") as archive:
            archive.add(wheelhouse, arcname="wheelhouse")
        marker.write_text(json.dumps(info, indent=1) + "\n")
        emit(Event("build", None, {"release": release, "python": python, "cached": False,
                                   "seconds": round(time.monotonic() - started, 3), "pins": len(pins)}))
        return Build(release, python, directory, directory / "wheelhouse.tar", pins, checked,
                     time.monotonic() - started)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def built(root: Path, release: str, python: str) -> Build | None:
    """A release built before on the controller for python, if there is one."""
    directory = root / release / f"py{python}"
    marker = directory / "release.json"
    if not marker.is_file():
        return None
    info = json.loads(marker.read_text())
    return Build(release, python, directory, directory / "wheelhouse.tar", tuple(info["pins"]),
                 bool(info.get("checked")))


# Host-side commands (sh, run as root).

STATE_SCRIPT = f"""\
cur=$(readlink {BASE}/current 2>/dev/null); prev=$(readlink {BASE}/previous 2>/dev/null)
echo "current ${{cur##*/}}"; echo "previous ${{prev##*/}}"
ls -tr {RELEASES} 2>/dev/null | while read -r r; do [ -e "{RELEASES}/$r/.complete" ] && echo "release $r"; done
/usr/bin/python3 -c 'import platform, sys; print("python %d.%d" % sys.version_info[:2]); \
print("machine", platform.machine()); print("libc", platform.libc_ver()[1])'
"""

INSTALL_SCRIPT = f"""\
set -e
r={RELEASES}/$1
rm -rf "$r"; mkdir -p "$r"; tar -xf "$2" -C "$r"; rm -f "$2"
/usr/bin/python3 -m venv "$r/venv"
"$r/venv/bin/pip" install --quiet --no-index --no-deps --no-cache-dir --disable-pip-version-check "$r"/wheelhouse/*.whl
touch "$r/.complete"
"""

# $1: the release to run, $2: the one to keep as previous (may be empty). Each link is replaced by a
# rename (atomic). The contract's /opt/celery/venv becomes a link to the current release's virtualenv.
SWITCH_SCRIPT = f"""\
set -e
cd {BASE}
[ -e "releases/$1/.complete" ] || {{ echo "release $1 is not installed" >&2; exit 1; }}
if [ -n "$2" ]; then ln -sfn "releases/$2" .previous.new && mv -Tf .previous.new previous; else rm -f previous; fi
ln -sfn "releases/$1" .current.new && mv -Tf .current.new current
if [ ! -L venv ]; then rm -rf venv; ln -sfn current/venv venv; fi
"""

# Beat runs the release too: restarted (or, on a host that had no release yet, started) when enabled.
BEAT_RESTART = "if systemctl is-enabled --quiet celerybeat.service; then systemctl restart celerybeat.service; fi"

SMOKE_SCRIPT = """\
import json, sys
from celery_app.loader import app
app.loader.import_default_modules()
result = app.tasks[sys.argv[1]].apply(args=json.loads(sys.argv[2]))
print(json.dumps(result.get(propagate=True), default=str)[:500])
"""


def _sh(script: str, *args: str) -> str:
    return " ".join(["/bin/sh", "-c", shlex.quote(script), "release", *map(shlex.quote, args)])


def smoke_command(config: AppConfig) -> str:
    """The smoke task run on a host with the current release and the nodes' environment, as user celery."""
    python = shlex.join(["timeout", "-k", "5", str(int(SMOKE_TIMEOUT)), "runuser", "-u", "celery", "--",
                         f"{BASE}/current/venv/bin/python", "-c", SMOKE_SCRIPT, config.smoke_name or "",
                         json.dumps(list(config.smoke_args))])
    return f"cd /tmp && set -a && . /etc/conf.d/celery && set +a && exec {python}"


def host_states(hosts: Sequence[Host], connect_timeout: float) -> dict[str, HostState]:
    """Every host's releases and Python, read at once."""
    results = run_on_hosts(hosts, _sh(STATE_SCRIPT), connect_timeout=connect_timeout, timeout=60, become=True)
    states = {}
    for host in hosts:
        result = results[host.name]
        if result.error is not None or result.exited != 0:
            states[host.name] = HostState(error=result.error or result.stderr.strip()[-300:] or "state unreadable")
        else:
            states[host.name] = parse_state(result.stdout)
    return states


def _run(host: Host, command: str, connect_timeout: float, timeout: float) -> tuple[bool, str]:
    result = run_on_hosts([host], command, connect_timeout=connect_timeout, timeout=timeout, become=True)[host.name]
    if result.error is not None:
        return False, result.error
    if result.exited != 0:
        return False, (result.stderr.strip() or result.stdout.strip())[-1500:] or f"exit {result.exited}"
    return True, result.stdout.strip()


def install(host: Host, build_: Build, connect_timeout: float) -> tuple[bool, str]:
    """Copy the release's wheelhouse to host and install it into /opt/celery/releases/<id>/venv."""
    remote = f"/tmp/fleet-release-{build_.release}.tar"
    try:
        with connection(host, connect_timeout) as conn:
            conn.put(str(build_.archive), remote)
    except Exception as exc:  # noqa: BLE001 - any transport failure is the host's, reported
        return False, f"copying the wheelhouse failed: {type(exc).__name__}: {exc}"
    return _run(host, _sh(INSTALL_SCRIPT, build_.release, remote), connect_timeout, INSTALL_TIMEOUT)


def switch(host: Host, release: str, previous: str | None, connect_timeout: float) -> tuple[bool, str]:
    return _run(host, _sh(SWITCH_SCRIPT, release, previous or ""), connect_timeout, 60)


def prune(host: Host, names: Sequence[str], connect_timeout: float) -> tuple[bool, str]:
    if not names:
        return True, ""
    paths = [f"{RELEASES}/{name}" for name in names if RELEASE_ID.match(name)]
    return _run(host, shlex.join(["rm", "-rf", "--", *paths]), connect_timeout, 120)


# The rollout.

@dataclass(frozen=True)
class Timeouts:
    connect: float = restarts.DEFAULT_CONNECT_TIMEOUT
    drain: float = restarts.DEFAULT_DRAIN_TIMEOUT
    restart: float = restarts.DEFAULT_RESTART_TIMEOUT
    verify: float = restarts.DEFAULT_VERIFY_TIMEOUT


Gate = tuple[bool, str, str, float, float]  # ok, code, detail, restart s, gate s


def _restart_and_gate(fleet: Fleet, hosts: Sequence[Host], config: AppConfig, timeouts: Timeouts, inventory: str,
                      emit: Listener, drain: bool = True) -> dict[str, Gate]:
    """Restart of hosts as one batch (drained first unless drain is off) and their beat, then each one's gate."""
    def relay(event: restarts.Event) -> None:
        for name in [event.host] if event.host else [host.name for host in hosts]:
            emit(Event("restart", name, {"step": event.kind, **dict(event.data or {})}))

    started = time.monotonic()
    outcome = restarts.rolling_restart(fleet.limited([host.name for host in hosts]), serial=len(hosts),
                                       drain_first=drain, drain_timeout=timeouts.drain,
                                       restart_timeout=timeouts.restart, verify_timeout=timeouts.verify,
                                       connect_timeout=timeouts.connect, inventory=inventory, on_event=relay)
    restarted = time.monotonic() - started
    for host in hosts:
        if host.is_beat:
            _run(host, BEAT_RESTART, timeouts.connect, 120)
    gates: dict[str, Gate] = {}
    by_host = {result.host: result for result in outcome.hosts}
    for host in hosts:
        result = by_host.get(host.name)
        if result is None or result.status != restarts.OK:
            codes = [f.code for f in (result.findings if result else ()) if f.status != restarts.OK]
            gates[host.name] = (False, "nodes_unhealthy", ", ".join(codes) or "restart failed", restarted, 0.0)
            continue
        gate_started = time.monotonic()
        if config.smoke_name:
            ok, text = _run(host, smoke_command(config), timeouts.connect, SMOKE_TIMEOUT + 10)
            if not ok:
                gates[host.name] = (False, "smoke_failed", f"smoke task {config.smoke_name}: {text[-600:]}",
                                    restarted, time.monotonic() - gate_started)
                continue
        gates[host.name] = (True, "", "", restarted, time.monotonic() - gate_started)
    return gates


def _stage(host: Host, state: HostState, build_: Build, timeouts: Timeouts,
           emit: Listener) -> tuple[HostRelease | None, float]:
    """Install the release on host (unless there) and switch to it: (the failure, if any; install seconds)."""
    release = build_.release
    emit(Event("host", host.name, {"before": state.current, "after": release}))
    started = time.monotonic()
    if release not in state.releases:
        ok, text = install(host, build_, timeouts.connect)
        emit(Event("install", host.name, {"ok": ok, "seconds": round(time.monotonic() - started, 3),
                                          "detail": "" if ok else text}))
        if not ok:
            return HostRelease(host.name, FAIL, state.current, state.current, "install_failed", text,
                               {"install": time.monotonic() - started}), 0.0
    installed = time.monotonic() - started
    ok, text = switch(host, release, state.current if state.current != release else state.previous, timeouts.connect)
    emit(Event("switch", host.name, {"ok": ok, "release": release, "detail": "" if ok else text}))
    if not ok:
        return HostRelease(host.name, FAIL, state.current, state.current, "switch_failed", text,
                           {"install": installed}), installed
    return None, installed


def _finish(fleet: Fleet, host: Host, state: HostState, release: str, installed: float, gate: Gate,
            config: AppConfig, timeouts: Timeouts, inventory: str, emit: Listener) -> HostRelease:
    """After the gate: prune old releases of a host that passed, switch back one that failed."""
    ok, code, detail, restarted, gated = gate
    seconds = {"install": round(installed, 3), "restart": round(restarted, 3), "gate": round(gated, 3)}
    emit(Event("gate", host.name, {"ok": ok, "code": code, "detail": detail, "seconds": round(gated, 3)}))
    if ok:
        after = replace(state, current=release, previous=state.current if state.current != release else state.previous,
                        releases=tuple(r for r in state.releases if r != release) + (release,))
        gone = prunable(after, config.keep)
        if gone:
            pruned, _ = prune(host, gone, timeouts.connect)
            emit(Event("prune", host.name, {"ok": pruned, "releases": gone}))
        return HostRelease(host.name, OK, state.current, release, "", "", seconds)
    return _restore(fleet, host, state, config, timeouts, inventory, emit,
                    HostRelease(host.name, FAIL, state.current, release, code, detail, seconds))


def _roll_host(fleet: Fleet, host: Host, state: HostState, build_: Build, config: AppConfig, timeouts: Timeouts,
               inventory: str, emit: Listener) -> HostRelease:
    """One host that serves a release: install, switch, drained restart, gate (switched back if it fails)."""
    failed, installed = _stage(host, state, build_, timeouts, emit)
    if failed:
        return failed
    gate = _restart_and_gate(fleet, [host], config, timeouts, inventory, emit)[host.name]
    return _finish(fleet, host, state, build_.release, installed, gate, config, timeouts, inventory, emit)


def _roll_fresh(fleet: Fleet, hosts: Sequence[Host], states: Mapping[str, HostState], builds: Sequence[Build],
                config: AppConfig, timeouts: Timeouts, inventory: str, emit: Listener) -> list[HostRelease]:
    """Hosts without a release (their nodes cannot run, so serve nothing) all at once: no canary, no drain."""
    lock = threading.Lock()

    def locked(event: Event) -> None:
        with lock:
            emit(event)

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        staged = list(pool.map(lambda pair: _stage(pair[0], states[pair[0].name], pair[1], timeouts, locked),
                               zip(hosts, builds)))
    ready = [host for host, (failed, _) in zip(hosts, staged) if failed is None]
    gates = _restart_and_gate(fleet, ready, config, timeouts, inventory, emit, drain=False) if ready else {}
    return [failed or _finish(fleet, host, states[host.name], build_.release, installed, gates[host.name], config,
                              timeouts, inventory, emit)
            for host, build_, (failed, installed) in zip(hosts, builds, staged)]


def _restore(fleet: Fleet, host: Host, state: HostState, config: AppConfig, timeouts: Timeouts, inventory: str,
             emit: Listener, failed: HostRelease) -> HostRelease:
    """Switch host back to the release it had, restart and verify it; failed, with what the restore did."""
    if not state.current:
        emit(Event("restore", host.name, {"ok": False, "release": None, "detail": "no earlier release to go back to"}))
        return replace(failed, after=failed.after, detail=failed.detail + "; no earlier release to go back to")
    ok, text = switch(host, state.current, state.previous, timeouts.connect)
    if ok:
        ok, _, text, _, _ = _restart_and_gate(fleet, [host], config, timeouts, inventory, emit)[host.name]
    emit(Event("restore", host.name, {"ok": ok, "release": state.current, "detail": text}))
    words = f"switched back to {state.current}" + (", healthy" if ok else f", NOT healthy: {text}")
    return replace(failed, after=state.current if ok else failed.after, detail=f"{failed.detail}; {words}")


def _lock_path(inventory: str | os.PathLike) -> Path:
    return build_root(Path(inventory)) / "rollout.pid"


def rollout_running(inventory: str | os.PathLike) -> bool:
    """Whether a rollout of this inventory is running now (its process holds the lock file)."""
    try:
        pid = int(_lock_path(inventory).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


@contextlib.contextmanager
def _rollout_lock(inventory: str | os.PathLike) -> Iterator[None]:
    """One rollout of an inventory at a time; health reads the lock (release drift is expected meanwhile)."""
    path = _lock_path(inventory)
    path.parent.mkdir(parents=True, exist_ok=True)
    if rollout_running(inventory):
        raise ReleaseError(f"{inventory}: another rollout is running (pid {path.read_text().strip()})")
    path.write_text(f"{os.getpid()}\n")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def roll_out(fleet: Fleet, config: AppConfig, *, inventory: str, version: str | None = None,
             rollback: bool = False, dry_run: bool = False, timeouts: Timeouts = Timeouts(),
             on_event: Listener | None = None) -> Outcome:
    """Build (or, rolling back, find) the release and roll it out host by host; stop at the first failed gate."""
    emit = on_event or (lambda event: None)
    if version:  # refused before any host is reached
        check_release_id(version, "TO" if rollback else "VERSION")
    started = time.monotonic()
    root = build_root(Path(inventory))
    workers = fleet.workers
    if not workers:
        raise ReleaseError(f"{inventory}: no worker host to release to")
    states = host_states(workers, timeouts.connect)
    unreachable = {name: state.error for name, state in states.items() if state.error}
    if unreachable:
        raise ReleaseError("worker host(s) unreachable, nothing changed: "
                           + "; ".join(f"{name}: {error}" for name, error in unreachable.items()))
    pythons = list(dict.fromkeys(states[host.name].python for host in workers))
    builds: dict[str, Build] = {}
    if rollback:
        canary = states[workers[0].name]
        release = check_release_id(version, "TO") if version else canary.previous
        if not release:
            raise ReleaseError(f"{workers[0].name}: no previous release to roll back to (give TO=<release id>)")
        for host in workers:
            state = states[host.name]
            if release not in state.releases:
                found = built(root, release, state.python)
                if found is None:
                    raise ReleaseError(f"{host.name}: release {release} is neither installed there nor built on "
                                       f"the controller for Python {state.python}")
                builds[state.python] = found
    else:
        first = None
        for python in pythons:
            sample = next(states[h.name] for h in workers if states[h.name].python == python)
            made = build(config, sample, root, version=version or (first.release if first else None), emit=emit)
            first = first or made
            builds[python] = made
        release = first.release
    results: list[HostRelease] = []
    with contextlib.nullcontext() if dry_run else _rollout_lock(inventory):
        _roll_hosts(fleet, config, workers, states, builds, release, root, dry_run, timeouts, inventory, emit,
                    results)
    return Outcome(release=release, action="rollback" if rollback else "release", hosts=tuple(results),
                   builds=tuple(builds.values()), dry_run=dry_run, elapsed=time.monotonic() - started)


def _roll_hosts(fleet: Fleet, config: AppConfig, workers: Sequence[Host], states: Mapping[str, HostState],
                builds: Mapping[str, Build], release: str, root: Path, dry_run: bool, timeouts: Timeouts,
                inventory: str, emit: Listener, results: list[HostRelease]) -> None:
    """Hosts without a release first, all at once; then each serving host in order, stopping at the first failure.

    results gets one entry per worker host, in inventory order.
    """
    done: dict[str, HostRelease] = {}
    todo: list[Host] = []
    for host in workers:
        state = states[host.name]
        if state.current == release:
            done[host.name] = HostRelease(host.name, UNCHANGED, release, release)
        elif dry_run:
            done[host.name] = HostRelease(host.name, PLANNED, state.current, release,
                                          detail="would install" if release not in state.releases else "installed")
            emit(Event("host", host.name, {"before": state.current, "after": release, "dry_run": True}))
        else:
            todo.append(host)

    def build_for(host: Host) -> Build:
        python = states[host.name].python
        return builds.get(python) or built(root, release, python) or Build(release, python, root, root / "missing",
                                                                           (), False)

    fresh = [host for host in todo if not states[host.name].current]
    if fresh:
        for outcome in _roll_fresh(fleet, fresh, states, [build_for(h) for h in fresh], config, timeouts,
                                   inventory, emit):
            done[outcome.host] = outcome
    stopped = any(outcome.status == FAIL for outcome in done.values())
    for host in (h for h in todo if states[h.name].current):
        state = states[host.name]
        if stopped:
            done[host.name] = HostRelease(host.name, SKIPPED, state.current, state.current, "not_reached")
            continue
        done[host.name] = _roll_host(fleet, host, state, build_for(host), config, timeouts, inventory, emit)
        stopped = done[host.name].status == FAIL
    results += [done[host.name] for host in workers]


def load_app_config(fleet: Fleet, inventory: str | os.PathLike) -> AppConfig:
    """The inventory's application; ReleaseError when it deploys the bundled celery_app (nothing to release)."""
    data = run_ansible_inventory(inventory)
    hostvars = (data.get("_meta") or {}).get("hostvars") or {}
    workers = [host.name for host in fleet.hosts if host.is_worker]
    config = app_config(hostvars, workers, Path(inventory).resolve(), redis=bool(fleet.redis_host))
    if config is None:
        raise ReleaseError(f"{inventory}: celery_worker_app_source is not set: the fleet runs the bundled celery_app, "
                           "which `make deploy` installs (releases are for an application of your own)")
    return config
