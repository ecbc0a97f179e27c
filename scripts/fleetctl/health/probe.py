"""On-host health probe (stdlib only, psutil when importable): prints one JSON object about this host.

fleetctl ships this file to each host over SSH and runs it with the Celery virtualenv's python
(psutil) or the system python3 (stdlib fallbacks); it must run on python3 >= 3.6 and import nothing
of fleetctl.
"""
import glob
import json
import os
import re
import socket
import subprocess
import time

try:
    import psutil
except ImportError:
    psutil = None

UNITS = ("celery.service", "celerybeat.service", "rabbitmq-server.service")
DISKS = ("/", "/var/log")


def env_file(path="/etc/conf.d/celery"):
    values = {}
    try:
        with open(path) as handle:
            for line in handle:
                match = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
                if match:
                    value = match.group(2).strip()
                    if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
                        value = value[1:-1]
                    values[match.group(1)] = value
    except OSError:
        pass
    return values


def units():
    found = {}
    try:
        out = subprocess.run(
            ["systemctl", "show", "--property=Id,LoadState,ActiveState,SubState,ActiveEnterTimestampMonotonic"]
            + list(UNITS), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True, timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return found
    now = time.monotonic()
    for block in out.split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("Id"):
            entered = int(props.get("ActiveEnterTimestampMonotonic") or 0)
            found[props["Id"]] = {
                "load": props.get("LoadState"), "active": props.get("ActiveState"), "sub": props.get("SubState"),
                "active_for": round(now - entered / 1e6, 1) if entered and props.get("ActiveState") == "active"
                else None,
            }
    return found


def processes():
    if psutil is not None:
        for proc in psutil.process_iter(["pid", "ppid", "cmdline"]):
            yield proc.info["pid"], proc.info["ppid"], proc.info["cmdline"] or []
        return
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as handle:
                raw = handle.read()
            with open("/proc/%s/stat" % entry) as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        yield int(entry), ppid, [arg.decode("utf-8", "replace") for arg in raw.split(b"\0") if arg]


def node_name(argv, hostname):
    """The node name of a celery worker command line (or setproctitle title), else None."""
    if argv and argv[0].startswith("[celeryd: "):
        return argv[0][len("[celeryd: "):].split(":", 1)[0] or None
    if "worker" not in argv:
        return None
    head = argv[:argv.index("worker")]
    if not any(os.path.basename(arg) == "celery" for arg in head):
        return None
    name = None
    for index, arg in enumerate(argv):
        if arg in ("-n", "--hostname") and index + 1 < len(argv):
            name = argv[index + 1]
        elif arg.startswith("--hostname="):
            name = arg.split("=", 1)[1]
        elif arg.startswith("-n") and len(arg) > 2 and not arg.startswith("--"):
            name = arg[2:]
    return (name or "celery@%h").replace("%h", hostname)


def workers(hostname):
    seen = {pid: (ppid, node_name(argv, hostname)) for pid, ppid, argv in processes()}
    mains = []
    for pid, (ppid, node) in sorted(seen.items()):
        # A pool process is a fork of its node's main process: same command line, parent = main.
        if node and seen.get(ppid, (None, None))[1] != node:
            mains.append({"pid": pid, "node": node})
    return mains


def pidfiles(env):
    pattern = env.get("CELERYD_PID_FILE") or "/run/celery/%n.pid"
    beat = os.path.realpath(env.get("CELERYBEAT_PID_FILE") or "/run/celery/celerybeat.pid")
    regex = re.compile("^" + re.escape(pattern).replace("%n", "(?P<name>.+)").replace("%h", ".+") + "$")
    found = []
    for path in sorted(glob.glob(re.sub(r"%[nNhdiI]", "*", pattern))):
        if os.path.realpath(path) == beat:
            continue
        try:
            with open(path) as handle:
                pid = int(handle.read().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        match = regex.match(path)
        found.append({"path": path, "name": match.group("name") if match and "name" in regex.groupindex else None,
                      "pid": pid, "alive": pid > 0 and os.path.exists("/proc/%d" % pid)})
    return found


def heartbeat(env):
    path = env.get("CELERY_HEARTBEAT_FILE") or "/var/lib/celery/heartbeat"
    try:
        with open(path) as handle:
            record = json.loads(handle.read())
        return {"path": path, "age": round(max(0.0, time.time() - float(record["epoch"])), 1),
                "node": record.get("node")}
    except (OSError, ValueError, TypeError, KeyError):
        return {"path": path, "age": None, "node": None}


def release(path="/opt/celery/current"):
    """The release the host runs (the target of /opt/celery/current), or None (the bundled app)."""
    try:
        return os.path.basename(os.readlink(path)) or None
    except OSError:
        return None


def _resp(text):
    """A RESP command (array of bulk strings) for the words of text."""
    words = [w.encode() for w in text]
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


def _reply(handle):
    """One RESP reply: a str for +/-/: lines and bulk strings (None for a null bulk)."""
    line = handle.readline().rstrip(b"\r\n")
    if not line:
        raise OSError("connection closed")
    kind, rest = line[:1], line[1:].decode("utf-8", "replace")
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else handle.read(size + 2)[:-2].decode("utf-8", "replace")
    if kind == b"-":
        return "ERR:" + rest
    return rest


def redis_backend(env, timeout=3.0):
    """The result backend of CELERY_RESULT_BACKEND when it is redis://: reachable, authenticated, memory.

    None for any other backend. The password never leaves this function (nor this host's env file).
    """
    url = env.get("CELERY_RESULT_BACKEND") or ""
    match = re.match(r"redis://(?:([^:@/]*)(?::([^@/]*))?@)?(\[[^]]+\]|[^:/]+)(?::(\d+))?", url)
    if not match:
        return None
    try:
        from urllib.parse import unquote
    except ImportError:  # pragma: no cover
        unquote = str
    user, password = unquote(match.group(1) or ""), unquote(match.group(2) or "")
    host, port = match.group(3).strip("[]"), int(match.group(4) or 6379)
    found = {"host": host, "port": port, "reachable": False, "authenticated": False,
             "used_memory": None, "maxmemory": None, "error": None}
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            found["reachable"] = True
            handle = sock.makefile("rb")
            if password:
                sock.sendall(_resp(["AUTH", user, password] if user else ["AUTH", password]))
                answer = _reply(handle)
                if answer != "OK":
                    found["error"] = (answer or "")[:120]
                    return found
            sock.sendall(_resp(["PING"]))
            answer = _reply(handle)
            if answer != "PONG":
                found["error"] = (answer or "")[:120]
                return found
            found["authenticated"] = True
            sock.sendall(_resp(["INFO", "memory"]))
            info = _reply(handle) or ""
            for line in info.splitlines():
                key, _, value = line.partition(":")
                if key in ("used_memory", "maxmemory") and value.strip().isdigit():
                    found[key] = int(value.strip())
    except (OSError, ValueError) as exc:
        found["error"] = type(exc).__name__ + ": " + str(exc)[:120]
    return found


def memory_percent():
    if psutil is not None:
        return psutil.virtual_memory().percent
    info = {}
    with open("/proc/meminfo") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0])
    return round(100.0 * (info["MemTotal"] - info["MemAvailable"]) / info["MemTotal"], 1)


def disk_percent(path):
    try:
        if psutil is not None:
            return psutil.disk_usage(path).percent
        st = os.statvfs(path)
    except OSError:
        return None
    used, avail = (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_bavail * st.f_frsize
    return round(100.0 * used / (used + avail), 1) if used + avail else 0.0


def main():
    hostname = socket.gethostname()
    env = env_file()
    cpus = os.cpu_count() or 1
    print(json.dumps({
        "hostname": hostname, "psutil": psutil is not None, "cpus": cpus,
        "load_per_cpu": round(os.getloadavg()[1] / cpus, 2), "memory_percent": memory_percent(),
        "disk_percent": {path: disk_percent(path) for path in DISKS},
        "units": units(), "heartbeat": heartbeat(env), "workers": workers(hostname), "pidfiles": pidfiles(env),
        "result_backend": redis_backend(env), "release": release(),
    }))


if __name__ == "__main__":
    main()
