"""Ansible vars plugin: connection and package-proxy variables for hosts of the local sandbox."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ansible.inventory.host import Host
from ansible.plugins.vars import BaseVarsPlugin

try:  # ansible-core >= 2.19 tags plugin strings untrusted; ours are plain addresses and paths.
    from ansible.template import trust_as_template as _trusted
except ImportError:  # pragma: no cover - older ansible-core
    def _trusted(value):
        return value

DOCUMENTATION = """
    name: sandbox
    short_description: Variables that reach hosts of the local sandbox fleet
    description:
      - For every host that `make sandbox-up` booted from an inventory in this directory, sets
        C(sandbox_address), C(ansible_host) (unless the inventory file sets it, for instance to a
        template of C(sandbox_address)), C(ansible_user) (root, or deploy with C(ansible_become) for
        a host whose C(sandbox_login) is deploy), the SSH key and options (host keys checked against
        C(.sandbox/known_hosts)), and the package proxy (C(fleet_http_proxy), C(fleet_ca_bundle)).
        Hosts that are not sandbox hosts get nothing.
      - State is read from the repository's C(.sandbox/fleets/*/fleet.json).
"""

_STATE = Path(__file__).resolve().parents[3] / ".sandbox"
# The sandbox trusts its own hosts by their own keys, recorded when it booted them: checking stays on.
_SSH_ARGS = (f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={_STATE / 'known_hosts'} -o LogLevel=ERROR "
             "-o ConnectTimeout=5")
_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


_PARSED: dict[Path, tuple[int, dict]] = {}  # fleet.json -> (mtime_ns, contents): Ansible asks per host and task


def _fleets() -> list[dict]:
    fleets = []
    for path in sorted((_STATE / "fleets").glob("*/fleet.json")):
        try:
            mtime = path.stat().st_mtime_ns
            if path not in _PARSED or _PARSED[path][0] != mtime:
                _PARSED[path] = (mtime, json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
        fleets.append(_PARSED[path][1])
    return fleets


def _host_vars(fleet: dict, host: dict) -> dict:
    gateway = host["address"].rsplit(".", 1)[0] + ".1"
    ca_bundle = next((p for p in _CA_BUNDLES if os.path.isfile(p)), "")
    values = {
        "sandbox_address": host["address"],
        "ansible_host": host["address"],
        "ansible_user": host.get("login") or "root",
        "ansible_port": 22,
        "ansible_ssh_private_key_file": str(_STATE / "ssh" / "id_ed25519"),
        "ansible_ssh_common_args": _SSH_ARGS,
        "ansible_python_interpreter": "/usr/bin/python3",
        "fleet_http_proxy": f"http://{gateway}:8888",
        "fleet_ca_bundle": ca_bundle,
        "sandbox_fleet": fleet["fid"],
    }
    if values["ansible_user"] != "root":  # a production-like host: an unprivileged login with sudo
        values.update(ansible_become=True, ansible_become_method="sudo", ansible_become_user="root")
    return {k: _trusted(v) if isinstance(v, str) else v for k, v in values.items()}


class VarsModule(BaseVarsPlugin):
    """Sandbox host variables, keyed by inventory directory and host name."""

    REQUIRES_ENABLED = True
    # Ansible then keeps one instance instead of loading the plugin again for every host and task.
    is_stateless = True

    def get_vars(self, loader, path, entities, cache=True):
        super().get_vars(loader, path, entities)
        hosts = [e for e in (entities if isinstance(entities, list) else [entities]) if isinstance(e, Host)]
        if not hosts:
            return {}
        directory = os.path.realpath(path)
        data = {}
        for fleet in _fleets():
            if fleet.get("inventory_dir") != directory:
                continue
            for entity in hosts:
                host = fleet["hosts"].get(entity.name)
                if host:
                    found = _host_vars(fleet, host)
                    if "ansible_host" in entity.vars:  # the inventory's own (e.g. "{{ sandbox_address }}")
                        del found["ansible_host"]
                    data.update(found)
        return data
