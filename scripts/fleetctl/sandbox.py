"""Local sandbox fleet: one systemd-nspawn host per inventory host, on a private bridge, over SSH."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fleetctl.errors import UsageError
from fleetctl.paths import ANSIBLE_CONFIG, REPO_ROOT, STATE_DIR

ROOT = REPO_ROOT
FLEETS_DIR = STATE_DIR / "fleets"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "celery-fleet-sandbox"

NET_PREFIX = "10.77"  # fleet N gets 10.77.N.0/24; .1 is the bridge (and proxy), hosts from .2
PROXY_PORT = 8888
SSH_READY_TIMEOUT = 90.0  # plus SSH_READY_PER_HOST for each host booting at once (they share the CPU)
SSH_READY_PER_HOST = 5.0
MIRROR = "http://deb.debian.org/debian"
SUITES = ("bookworm", "trixie")
# The image recipe: any change here (or in _customize_image) yields a new image hash.
IMAGE_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-apt", "iproute2", "sudo",
)
IMAGE_RECIPE_VERSION = 2
KNOWN_HOSTS = STATE_DIR / "known_hosts"  # every sandbox host's own key, recorded when it boots
LOGINS = ("root", "deploy")  # sandbox_login: root (default), or deploy, a user with sudo (no root login)
_HOSTNAME_RE = re.compile(r"^(?=.{1,63}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class SandboxError(UsageError):
    """A user-facing error: printed as one line, exit code 2."""


@dataclass
class HostState:
    name: str
    address: str
    machine: str
    login: str = "root"  # the only user SSH lets in: root, or deploy (with sudo)


@dataclass
class Fleet:
    fid: str
    inventory: str
    inventory_dir: str
    index: int
    suite: str
    image: str
    hosts: dict[str, HostState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Derived names and addresses: attributes, not fields (fleet.json keeps only what they derive from).
        self.bridge = f"sbr{self.fid}"
        self.gateway = f"{NET_PREFIX}.{self.index}.1"
        self.subnet = f"{NET_PREFIX}.{self.index}.0/24"
        self.proxy_url = f"http://{self.gateway}:{PROXY_PORT}"
        self.directory = FLEETS_DIR / self.fid

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Fleet":
        data = json.loads(text)
        data["hosts"] = {n: HostState(**h) for n, h in data["hosts"].items()}
        return cls(**data)


# ---------------------------------------------------------------- pure helpers

def fleet_id(inventory: Path) -> str:
    """Stable short id of an inventory file (its absolute path)."""
    return hashlib.sha1(str(inventory.resolve()).encode()).hexdigest()[:8]


def inventory_dir(inventory: Path) -> str:
    """The directory Ansible hands to vars plugins for this inventory source."""
    inventory = inventory.resolve()
    return str(inventory if inventory.is_dir() else inventory.parent)


def host_names(inventory_json: dict) -> list[str]:
    """All host names of an `ansible-inventory --list` document, in first-seen order."""
    names: dict[str, None] = dict.fromkeys(inventory_json.get("_meta", {}).get("hostvars", {}))
    for group, body in inventory_json.items():
        if group != "_meta" and isinstance(body, dict):
            names.update(dict.fromkeys(body.get("hosts", [])))
    return list(names)


def invalid_host_names(names: list[str]) -> list[str]:
    """Names that are not valid host names (RFC 1123, at most 63 characters)."""
    return [n for n in names if not _HOSTNAME_RE.match(n)]


def max_hosts() -> int:
    """How many hosts one fleet subnet holds (a /24 less network, bridge and broadcast)."""
    return ipaddress.ip_network(f"{NET_PREFIX}.0.0/24").num_addresses - 3


def host_address(index: int, position: int) -> str:
    """Address of the position-th host (0-based) of fleet number index."""
    return f"{NET_PREFIX}.{index}.{position + 2}"


def machine_name(fid: str, position: int) -> str:
    """nspawn machine name: short, so its veth name 'vb-<machine>' fits in 15 characters."""
    return f"sb{fid[:6]}-{position}"


def network_unit(address: str) -> str:
    """systemd-networkd unit for the container side of the veth: static address, no route out."""
    return f"[Match]\nName=host0\n\n[Network]\nAddress={address}/24\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"


def hosts_file(fleet: Fleet) -> str:
    """/etc/hosts for every host of a fleet: all its peers resolve by inventory name."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", f"{fleet.gateway}\tsandbox-gateway"]
    lines += [f"{h.address}\t{h.name}" for h in fleet.hosts.values()]
    return "\n".join(lines) + "\n"


def proxy_config(fleet: Fleet) -> str:
    """tinyproxy configuration: listens on the bridge only, serves only the fleet's subnet."""
    d = fleet.directory
    return "\n".join([
        f"Port {PROXY_PORT}", f"Listen {fleet.gateway}", f"Allow {fleet.subnet}",
        "Timeout 600", "MaxClients 200", "LogLevel Warning",
        f"LogFile \"{d / 'proxy.log'}\"", f"PidFile \"{d / 'proxy.pid'}\"",
        "ConnectPort 443", "ConnectPort 80", "DisableViaHeader Yes", "",
    ])


def image_hash(suite: str) -> str:
    """Hash of everything that defines the base image."""
    import inspect
    recipe = [IMAGE_RECIPE_VERSION, suite, MIRROR, IMAGE_PACKAGES, inspect.getsource(_customize_image)]
    return hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:12]


# ---------------------------------------------------------------- system probes

def _run(cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, text=True, capture_output=True, **kw)


def _proc_environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _proc_cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def container_inits() -> dict[tuple[str, str], int]:
    """(fleet id, host name) -> PID of that sandbox host's PID 1, for every live sandbox host."""
    found = {}
    for pid in _pids():
        env = _proc_environ(pid)
        if "SANDBOX_FLEET" in env and env.get("container") == "systemd-nspawn":
            key = (env["SANDBOX_FLEET"], env.get("SANDBOX_HOST", ""))
            found[key] = min(pid, found.get(key, pid))
    return found


def nspawn_pids(machine_prefix: str) -> dict[str, int]:
    """machine name -> PID of its systemd-nspawn process, for machines starting with the prefix."""
    found = {}
    for pid in _pids():
        args = _proc_cmdline(pid)
        if args and args[0].endswith("systemd-nspawn"):
            for arg in args:
                if arg.startswith("--machine=") and arg[10:].startswith(machine_prefix):
                    found[arg[10:]] = pid
    return found


def _proxy_pids(conf: Path) -> list[int]:
    return [pid for pid in _pids() if (args := _proc_cmdline(pid)) and args[0].endswith("tinyproxy")
            and str(conf) in args]


def _link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def _addresses_in_use() -> set[str]:
    out = _run(["ip", "-4", "-o", "addr", "show"], check=False).stdout
    return set(re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out))


def _pid1_start(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    return ""


# ---------------------------------------------------------------- inventory

def read_inventory(inventory: Path) -> dict[str, str]:
    """Host name -> sandbox_login of each host of an inventory, via ansible-inventory; SandboxError when bad."""
    if not inventory.exists():
        raise SandboxError(f"inventory {inventory}: no such file or directory")
    ansible_inventory = Path(sys.executable).parent / "ansible-inventory"
    if not ansible_inventory.exists():
        ansible_inventory = Path(shutil.which("ansible-inventory") or "ansible-inventory")
    env = dict(os.environ, ANSIBLE_CONFIG=str(ANSIBLE_CONFIG),
               ANSIBLE_INVENTORY_UNPARSED_FAILED="true", ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED="true",
               ANSIBLE_VARS_ENABLED="host_group_vars", ANSIBLE_NOCOLOR="1")
    proc = _run([str(ansible_inventory), "-i", str(inventory), "--list"], check=False,
                env=env, cwd=ROOT)
    if proc.returncode != 0:
        detail = " ".join(line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip())
        raise SandboxError(f"inventory {inventory} does not parse: {detail[:600]}")
    listing = json.loads(proc.stdout)
    names = host_names(listing)
    if not names:
        raise SandboxError(f"inventory {inventory}: no hosts")
    hostvars = (listing.get("_meta") or {}).get("hostvars") or {}
    logins = {name: (hostvars.get(name) or {}).get("sandbox_login", "root") for name in names}
    bad = sorted(f"{name}: {login!r}" for name, login in logins.items() if login not in LOGINS)
    if bad:
        raise SandboxError(f"inventory {inventory}: sandbox_login must be one of {', '.join(LOGINS)} "
                           f"({'; '.join(bad)})")
    return logins


def validate_hosts(inventory: Path, names: list[str]) -> None:
    """Reject host names and host counts the sandbox cannot serve."""
    bad = invalid_host_names(names)
    if bad:
        raise SandboxError(f"inventory {inventory}: not a valid host name: {', '.join(map(repr, bad))} "
                           "(letters, digits, '-' and '.', at most 63 characters)")
    if len(names) > max_hosts():
        raise SandboxError(f"inventory {inventory}: {len(names)} hosts, but the sandbox subnet holds "
                           f"at most {max_hosts()}")


# ---------------------------------------------------------------- state

@contextlib.contextmanager
def _locked():
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def load_fleets() -> list[Fleet]:
    fleets = []
    for path in sorted(FLEETS_DIR.glob("*/fleet.json")):
        with contextlib.suppress(ValueError, TypeError, OSError):
            fleets.append(Fleet.from_json(path.read_text()))
    return fleets


def _save(fleet: Fleet) -> None:
    fleet.directory.mkdir(parents=True, exist_ok=True)
    tmp = fleet.directory / "fleet.json.tmp"
    tmp.write_text(fleet.to_json())
    tmp.replace(fleet.directory / "fleet.json")


def _free_index(fleets: list[Fleet], fid: str) -> int:
    taken = {f.index for f in fleets if f.fid != fid}
    in_use = _addresses_in_use()
    for index in range(256):
        if index not in taken and f"{NET_PREFIX}.{index}.1" not in in_use:
            return index
    raise SandboxError("no free sandbox subnet left (256 fleets up?)")


def plan_fleet(inventory: Path, logins: dict[str, str], suite: str, image: Path) -> Fleet:
    """The fleet for an inventory: reuses the addresses of an earlier run where names match."""
    fid = fleet_id(inventory)
    names = list(logins)
    fleets = load_fleets()
    previous = next((f for f in fleets if f.fid == fid), None)
    inv_dir = inventory_dir(inventory)
    for other in fleets:
        clash = set(other.hosts) & set(names)
        if other.fid != fid and other.inventory_dir == inv_dir and clash:
            raise SandboxError(f"inventory {inventory}: host(s) {', '.join(sorted(clash))} already up from "
                               f"{other.inventory} in the same directory; bring that one down first")
    index = previous.index if previous else _free_index(fleets, fid)
    fleet = Fleet(fid=fid, inventory=str(inventory.resolve()), inventory_dir=inv_dir, index=index,
                  suite=suite, image=str(image))
    for position, (name, login) in enumerate(logins.items()):
        fleet.hosts[name] = HostState(name=name, address=host_address(index, position),
                                      machine=machine_name(fid, position), login=login)
    return fleet


# ---------------------------------------------------------------- image

def _customize_image(root: Path) -> None:
    """Make a debootstrapped root bootable as a sandbox host."""
    (root / "etc/hostname").unlink(missing_ok=True)
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    ssh = root / "root/.ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    (ssh / "authorized_keys").touch(mode=0o600)
    # Each host gets a host key of its own when it boots (bound in): none is shared through the image.
    for old in (root / "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    (root / "etc/ssh/sshd_config.d/sandbox.conf").write_text(
        "PasswordAuthentication no\nPermitRootLogin prohibit-password\nUseDNS no\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\n")
    # The unprivileged login of production-like hosts (sandbox_login: deploy): sudo without a password.
    subprocess.run(["chroot", str(root), "useradd", "--create-home", "--shell", "/bin/bash", "deploy"],
                   check=True, capture_output=True)
    home = root / "home/deploy/.ssh"
    home.mkdir(mode=0o700, exist_ok=True)
    subprocess.run(["chroot", str(root), "chown", "deploy:deploy", "/home/deploy/.ssh"], check=True,
                   capture_output=True)
    sudoers = root / "etc/sudoers.d/deploy"
    sudoers.write_text("deploy ALL=(ALL:ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)
    (root / "etc/systemd/network").mkdir(parents=True, exist_ok=True)
    subprocess.run(["chroot", str(root), "systemctl", "enable", "systemd-networkd.service"],
                   check=True, capture_output=True)
    for unit in ("systemd-networkd-wait-online.service", "apt-daily.timer", "apt-daily-upgrade.timer",
                 "e2scrub_reap.service"):
        subprocess.run(["chroot", str(root), "systemctl", "mask", unit], check=True, capture_output=True)
    subprocess.run(["chroot", str(root), "apt-get", "clean"], check=True, capture_output=True)


def _quiet(text: str) -> None:
    """The default progress callback: says nothing."""


def ensure_image(suite: str, log=_quiet) -> Path:
    """The cached base root for a suite, built with debootstrap when its recipe changed."""
    image = CACHE_DIR / "images" / f"{suite}-{image_hash(suite)}"
    if (image / ".complete").exists():
        return image
    image.parent.mkdir(parents=True, exist_ok=True)
    # One build at a time per suite: another sandbox up (another fleet, another checkout) may be building
    # it, and replacing an image in use would pull the root from under that fleet's hosts.
    with open(image.parent / f".{suite}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (image / ".complete").exists():
            return image
        return _build_image(suite, image, log)


def _build_image(suite: str, image: Path, log=_quiet) -> Path:
    """debootstrap the suite into a temporary directory, customize it, and move it to image."""
    build = Path(tempfile.mkdtemp(prefix=f".{suite}-", dir=image.parent))
    log(f"Building the {suite} base image (debootstrap, about a minute) in {image}")
    try:
        proc = _run(["debootstrap", "--variant=minbase", f"--include={','.join(IMAGE_PACKAGES)}",
                     suite, str(build), MIRROR], check=False)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
            raise SandboxError(f"debootstrap of {suite} failed (is {MIRROR} reachable?):\n{tail}")
        _customize_image(build)
        (build / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
        if image.exists():
            shutil.rmtree(image)
        build.rename(image)
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)
    return image


# ---------------------------------------------------------------- network and proxy

def ensure_bridge(fleet: Fleet) -> None:
    if not _link_exists(fleet.bridge):
        _run(["ip", "link", "add", fleet.bridge, "type", "bridge"])
    addrs = _run(["ip", "-4", "-o", "addr", "show", "dev", fleet.bridge]).stdout
    if f"inet {fleet.gateway}/24" not in addrs:
        _run(["ip", "addr", "flush", "dev", fleet.bridge])
        _run(["ip", "addr", "add", f"{fleet.gateway}/24", "dev", fleet.bridge])
    _run(["ip", "link", "set", fleet.bridge, "up"])


def ensure_proxy(fleet: Fleet) -> None:
    conf = fleet.directory / "proxy.conf"
    text = proxy_config(fleet)
    running = _proxy_pids(conf)
    if running and conf.exists() and conf.read_text() == text and _port_open(fleet.gateway, PROXY_PORT):
        return
    for pid in running:
        _kill(pid, signal.SIGKILL)
    conf.write_text(text)
    tinyproxy = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
    subprocess.Popen([tinyproxy, "-d", "-c", str(conf)], stdin=subprocess.DEVNULL,
                     stdout=open(fleet.directory / "proxy.out", "ab"), stderr=subprocess.STDOUT,
                     start_new_session=True, close_fds=True)
    if not _wait(lambda: _port_open(fleet.gateway, PROXY_PORT), 10):
        raise SandboxError(f"package proxy did not start on {fleet.proxy_url}; see {fleet.directory / 'proxy.out'}")


def _port_open(address: str, port: int, banner: bytes = b"") -> bool:
    try:
        with socket.create_connection((address, port), timeout=1) as sock:
            if banner:
                sock.settimeout(2)
                return sock.recv(16).startswith(banner)
            return True
    except OSError:
        return False


def _wait(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# ---------------------------------------------------------------- hosts

def ssh_key() -> Path:
    """The sandbox's SSH key pair (private key path); generated on first use."""
    key = STATE_DIR / "ssh" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "celery-fleet-sandbox", "-f", str(key)])
    return key


def cgroup_dirs(machine: str) -> list[Path]:
    """The host's own cgroup per writable hierarchy: nspawn --keep-unit nests the container below it.

    Without it every container's systemd would share the same /payload cgroup (nspawn's default
    when started from the root cgroup) and lose track of its services' processes.
    """
    roots = [Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup")]
    seen, dirs = set(), []
    for root in roots:
        procs = root / "cgroup.procs"
        if procs.exists() and os.access(procs, os.W_OK) and root.resolve() not in seen:
            seen.add(root.resolve())
            dirs.append(root / "sandbox" / machine)
    return dirs


def _enter_cgroups(dirs: list[Path]):
    def enter() -> None:
        for d in dirs:
            (d / "cgroup.procs").write_text("0")
    return enter


def _remove_cgroups(pattern: str) -> None:
    """Remove, bottom-up as cgroupfs requires, the sandbox cgroups matching a glob pattern."""
    def remove_all() -> bool:
        left = False
        for root in {d.parent for d in cgroup_dirs("x")}:
            for top in root.glob(pattern):
                for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
                    try:
                        os.rmdir(dirpath)
                    except OSError:
                        left = True
        return not left
    _wait(remove_all, 3, 0.1)  # the last processes of a killed namespace may take a moment to go


def known_host_lines(text: str, addresses: set[str]) -> list[str]:
    """The lines of a known_hosts text that name none of addresses."""
    return [line for line in text.splitlines() if line.strip() and line.split(maxsplit=1)[0] not in addresses]


def record_host_key(address: str, public_key: str) -> None:
    """Trust public_key, and only it, for address in the sandbox's known_hosts (callers hold the lock)."""
    text = KNOWN_HOSTS.read_text() if KNOWN_HOSTS.exists() else ""
    key_type, key_data = public_key.split()[:2]
    lines = [*known_host_lines(text, {address}), f"{address} {key_type} {key_data}"]
    tmp = KNOWN_HOSTS.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(KNOWN_HOSTS)


def forget_host_keys(addresses: set[str]) -> None:
    """Drop addresses from the sandbox's known_hosts (callers hold the lock)."""
    if KNOWN_HOSTS.exists():
        lines = known_host_lines(KNOWN_HOSTS.read_text(), addresses)
        KNOWN_HOSTS.write_text("\n".join(lines) + "\n" if lines else "")


def _has_disk(fleet: Fleet, name: str) -> bool:
    hdir = fleet.directory / "hosts" / name
    return (hdir / "upper").is_dir() and (hdir / "ssh_host_ed25519_key.pub").is_file()


def _start_host(fleet: Fleet, host: HostState, key: Path, keep_disk: bool = False) -> None:
    """Boot a host: blank (a new disk and host key), or with the disk and host key it had (keep_disk)."""
    hdir = fleet.directory / "hosts" / host.name
    upper = hdir / "upper"
    host_key = hdir / "ssh_host_ed25519_key"
    if not (keep_disk and _has_disk(fleet, host.name)):
        if hdir.exists():
            shutil.rmtree(hdir)
        upper.mkdir(parents=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", str(host_key)])
    (hdir / "10-host0.network").write_text(network_unit(host.address))
    record_host_key(host.address, (hdir / "ssh_host_ed25519_key.pub").read_text())
    login_keys = "/root/.ssh/authorized_keys" if host.login == "root" else f"/home/{host.login}/.ssh/authorized_keys"
    cmd = [
        shutil.which("systemd-nspawn") or "/usr/bin/systemd-nspawn",
        "--quiet", "--boot", "--register=no", "--keep-unit", "--console=read-only",
        f"--machine={host.machine}", f"--hostname={host.name}",
        f"--directory={fleet.image}", f"--overlay={fleet.image}:{upper}:/",
        f"--network-bridge={fleet.bridge}",
        "--resolv-conf=off", "--timezone=off", "--link-journal=no",
        f"--bind-ro={hdir / '10-host0.network'}:/etc/systemd/network/10-host0.network",
        f"--bind-ro={fleet.directory / 'etc-hosts'}:/etc/hosts",
        f"--bind-ro={key}.pub:{login_keys}",
        f"--bind-ro={host_key}:/etc/ssh/ssh_host_ed25519_key",
        f"--bind-ro={host_key}.pub:/etc/ssh/ssh_host_ed25519_key.pub",
        f"--setenv=SANDBOX_FLEET={fleet.fid}", f"--setenv=SANDBOX_HOST={host.name}",
    ]
    cgroups = cgroup_dirs(host.machine)
    for d in cgroups:
        d.mkdir(parents=True, exist_ok=True)
    subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=open(hdir / "console.log", "ab"),
                     stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                     preexec_fn=_enter_cgroups(cgroups))


def _stop_host(fleet_fid: str, name: str, machine: str, inits: dict, nspawns: dict) -> None:
    """Kill a host's PID 1 (the kernel ends its whole PID namespace), then reap its nspawn."""
    pid1 = inits.get((fleet_fid, name))
    if pid1:
        _kill(pid1, signal.SIGKILL)
        _wait(lambda: not Path(f"/proc/{pid1}").exists(), 10)
    nspawn = nspawns.get(machine)
    if nspawn and not _wait(lambda: not Path(f"/proc/{nspawn}").exists(), 5):
        _kill(nspawn, signal.SIGKILL)
        _wait(lambda: not Path(f"/proc/{nspawn}").exists(), 5)
    veth = f"vb-{machine}"
    if machine and _link_exists(veth):
        _run(["ip", "link", "del", veth], check=False)
    if machine:
        _remove_cgroups(machine)


def _ssh_ready(address: str) -> bool:
    return _port_open(address, 22, banner=b"SSH-")


# Every booted host's systemd takes inotify instances of the machine's (root's) budget; Debian's 128
# runs out at about twenty hosts ("Too many open files" at boot). Raised, never lowered.
INOTIFY_LIMITS = {"/proc/sys/fs/inotify/max_user_instances": 8192, "/proc/sys/fs/inotify/max_user_watches": 524288}


def _raise_inotify_limits() -> None:
    for path, wanted in INOTIFY_LIMITS.items():
        with contextlib.suppress(OSError, ValueError):
            if int(Path(path).read_text()) < wanted:
                Path(path).write_text(f"{wanted}\n")


def _check_tools() -> None:
    for tool in ("systemd-nspawn", "debootstrap", "tinyproxy", "ip", "ssh-keygen"):
        if not shutil.which(tool):
            raise SandboxError(f"{tool} not found: run `make setup` (installs the system packages)")


def _retire_changed(old: Fleet | None, fleet: Fleet, inits: dict, nspawns: dict) -> None:
    """Stop the hosts of the last run that left the inventory or whose address, machine, login or image changed."""
    if old is None:
        return
    for name, h in old.hosts.items():
        new = fleet.hosts.get(name)
        if new is None or new != h or old.image != fleet.image:
            _stop_host(old.fid, name, h.machine, inits, nspawns)
            shutil.rmtree(fleet.directory / "hosts" / name, ignore_errors=True)
            inits.pop((old.fid, name), None)


def _boot_missing(fleet: Fleet, key: Path, inits: dict, nspawns: dict) -> list[HostState]:
    """Boot every host of the fleet that is not running; the ones booted."""
    started = []
    for name, h in fleet.hosts.items():
        if inits.get((fleet.fid, name)) and h.machine in nspawns:
            continue
        _stop_host(fleet.fid, name, h.machine, inits, nspawns)
        _start_host(fleet, h, key)
        started.append(h)
    return started


def _wait_for_ssh(fleet: Fleet, booting: int) -> None:
    bound = SSH_READY_TIMEOUT + SSH_READY_PER_HOST * booting
    with ThreadPoolExecutor(max_workers=max(1, len(fleet.hosts))) as pool:
        ready = dict(zip(fleet.hosts, pool.map(lambda h: _wait(lambda: _ssh_ready(h.address), bound, 0.1),
                                                 fleet.hosts.values())))
    late = [n for n, ok in ready.items() if not ok]
    if late:
        raise SandboxError(f"host(s) not reachable over SSH after {bound:.0f} s: {', '.join(late)}; "
                           f"see {fleet.directory}/hosts/<name>/console.log")


def up(inventory: Path, suite: str = "bookworm", log=_quiet) -> Fleet:
    """Bring every host of an inventory up (idempotent: running hosts are left as they are)."""
    if suite not in SUITES:
        raise SandboxError(f"suite {suite!r}: expected one of {', '.join(SUITES)}")
    logins = read_inventory(inventory)
    validate_hosts(inventory, list(logins))
    _check_tools()
    _raise_inotify_limits()
    image = ensure_image(suite, log)
    key = ssh_key()
    with _locked():
        fleet = plan_fleet(inventory, logins, suite, image)
        inits, nspawns = container_inits(), nspawn_pids(f"sb{fleet.fid[:6]}-")
        _retire_changed(next((f for f in load_fleets() if f.fid == fleet.fid), None), fleet, inits, nspawns)
        _save(fleet)
        (fleet.directory / "hosts").mkdir(parents=True, exist_ok=True)
        # Bound into every host as /etc/hosts; rewritten in place (same inode) so running hosts see new peers.
        (fleet.directory / "etc-hosts").write_text(hosts_file(fleet))
        ensure_bridge(fleet)
        ensure_proxy(fleet)
        started = _boot_missing(fleet, key, inits, nspawns)
    if started:
        log(f"Booting {len(started)} host(s): {', '.join(h.name for h in started)}; waiting for their SSH "
            f"(at most {SSH_READY_TIMEOUT + SSH_READY_PER_HOST * len(started):.0f} s)")
    _wait_for_ssh(fleet, len(started))
    return fleet


def _fleet_host(inventory: Path, name: str) -> tuple[Fleet, HostState]:
    fid = fleet_id(inventory)
    fleet = next((f for f in load_fleets() if f.fid == fid), None)
    if fleet is None:
        raise SandboxError(f"inventory {inventory}: no sandbox fleet is up for it (run `fleetctl sandbox up`)")
    if name not in fleet.hosts:
        raise SandboxError(f"{name}: not a host of the sandbox fleet of {inventory} "
                           f"(hosts: {', '.join(fleet.hosts)})")
    return fleet, fleet.hosts[name]


def poweroff(inventory: Path, name: str) -> bool:
    """Cut a host's power: its PID 1 killed at once, no shutdown; its disk stays. False: it was off."""
    with _locked():
        fleet, host = _fleet_host(inventory, name)
        inits, nspawns = container_inits(), nspawn_pids(f"sb{fleet.fid[:6]}-")
        running = bool(inits.get((fleet.fid, name))) or host.machine in nspawns
        _stop_host(fleet.fid, name, host.machine, inits, nspawns)
    return running


def poweron(inventory: Path, name: str, log=_quiet) -> bool:
    """Boot a powered-off host with the disk it had, and wait for its SSH. False: it was already on."""
    key = ssh_key()
    with _locked():
        fleet, host = _fleet_host(inventory, name)
        inits, nspawns = container_inits(), nspawn_pids(f"sb{fleet.fid[:6]}-")
        if inits.get((fleet.fid, name)) and host.machine in nspawns:
            return False
        if not _has_disk(fleet, name):
            raise SandboxError(f"{name}: has no disk to boot from (never booted, or removed): "
                               "`fleetctl sandbox up` boots it blank")
        _stop_host(fleet.fid, name, host.machine, inits, nspawns)  # leftovers of the cut: veth, cgroups
        _start_host(fleet, host, key, keep_disk=True)
    log(f"Powering on {name} with its disk; waiting for its SSH (at most {SSH_READY_TIMEOUT:.0f} s)")
    if not _wait(lambda: _ssh_ready(host.address), SSH_READY_TIMEOUT, 0.1):
        raise SandboxError(f"{name}: not reachable over SSH after {SSH_READY_TIMEOUT:.0f} s; "
                           f"see {fleet.directory}/hosts/{name}/console.log")
    return True


def down(inventory: Path | None = None, everything: bool = False) -> list[str]:
    """Stop and remove the hosts, bridge and proxy of one inventory's fleet (or of all fleets)."""
    with _locked():
        fleets = load_fleets()
        if not everything:
            fid = fleet_id(inventory)
            fleets = [f for f in fleets if f.fid == fid] or [Fleet(fid=fid, inventory=str(inventory), inventory_dir="",
                                                                   index=-1, suite="", image="")]
        inits = container_inits()
        removed = []
        for fleet in fleets:
            nspawns = nspawn_pids(f"sb{fleet.fid[:6]}-")
            names = {n: h.machine for n, h in fleet.hosts.items()}
            # Leftovers of earlier runs that the state file no longer lists.
            names.update({n: "" for (f, n) in inits if f == fleet.fid and n not in names})
            for name, machine in names.items():
                _stop_host(fleet.fid, name, machine, inits, nspawns)
            for machine, pid in nspawn_pids(f"sb{fleet.fid[:6]}-").items():
                _kill(pid, signal.SIGKILL)
            _remove_cgroups(f"sb{fleet.fid[:6]}-*")
            for pid in _proxy_pids(fleet.directory / "proxy.conf"):
                _kill(pid, signal.SIGKILL)
            if _link_exists(fleet.bridge):
                _run(["ip", "link", "del", fleet.bridge], check=False)
            forget_host_keys({h.address for h in fleet.hosts.values()})
            shutil.rmtree(fleet.directory, ignore_errors=True)
            removed.append(fleet.inventory)
    return removed


def status() -> list[dict]:
    """One row per sandbox host: fleet inventory, name, address, state."""
    inits = container_inits()
    rows = []
    for fleet in load_fleets():
        nspawns = nspawn_pids(f"sb{fleet.fid[:6]}-")
        for name, h in fleet.hosts.items():
            pid1 = inits.get((fleet.fid, name))
            if pid1 and h.machine in nspawns:
                state = "running" if _ssh_ready(h.address) else "booting"
            else:
                state = "stopped"
            rows.append({"inventory": os.path.relpath(fleet.inventory, ROOT), "host": name,
                         "address": h.address, "state": state, "pid1": pid1 or None,
                         "started": _pid1_start(pid1) if pid1 else None})
    return rows
