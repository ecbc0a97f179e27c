"""The inventory as ansible-core itself sees it, rendered: ``python -m fleetctl.ansible_view INVENTORY``.

Run as a child process (ansible-core reads its configuration when imported; ``ANSIBLE_CONFIG`` is set
by the caller). Prints JSON shaped like ``ansible-inventory --list`` (groups with ``hosts`` and
``children``, ``_meta.hostvars``), but each host's variables are the ones the fleet tools use, with
their templates rendered and vaulted values decrypted, and the connection settings Ansible would use
for the host (its config's defaults where the inventory sets none). Secrets (``fleet_broker_password``)
are printed only with ``--secrets``: the caller caches the rest.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

# Variables the tools read, rendered per host. Connection variables get Ansible's defaults.
FLEET_VARS = ("celery_worker_nodes", "celery_broadcast_queues", "fleet_broker_password_file", "rabbitmq_tls_cert",
              "sandbox_fleet", "celery_worker_app_source", "celery_worker_app", "celery_worker_app_requirements",
              "celery_worker_app_smoke_task", "celery_worker_app_keep_releases")
CONNECTION_VARS = {
    "ansible_host": (), "ansible_user": ("ansible_ssh_user",), "ansible_port": ("ansible_ssh_port",),
    "ansible_ssh_private_key_file": ("ansible_private_key_file",), "ansible_ssh_common_args": (),
    "ansible_ssh_extra_args": (), "ansible_become": (), "ansible_become_method": (), "ansible_become_user": (),
}
SECRET_VARS = ("fleet_broker_password",)


def _defaults() -> dict[str, Any]:
    from ansible import constants as C

    return {"ansible_user": C.DEFAULT_REMOTE_USER, "ansible_port": C.DEFAULT_REMOTE_PORT,
            "ansible_ssh_private_key_file": C.DEFAULT_PRIVATE_KEY_FILE, "ansible_become": C.DEFAULT_BECOME,
            "ansible_become_method": C.DEFAULT_BECOME_METHOD, "ansible_become_user": C.DEFAULT_BECOME_USER,
            "host_key_checking": C.HOST_KEY_CHECKING}


def _loader() -> Any:
    from ansible import constants as C
    from ansible.cli import CLI
    from ansible.parsing.dataloader import DataLoader

    loader = DataLoader()
    files = C.DEFAULT_VAULT_PASSWORD_FILE
    files = [files] if isinstance(files, str) else list(files or [])
    secrets = CLI.setup_vault_secrets(loader, vault_ids=list(C.DEFAULT_VAULT_IDENTITY_LIST or []),
                                      vault_password_files=files, ask_vault_pass=False, auto_prompt=False)
    loader.set_vault_secrets(secrets)
    return loader


def _plain(value: Any) -> Any:
    """value as plain JSON types (ansible-core wraps strings and containers)."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    return str(value)


def _render(templar: Any, variables: dict[str, Any], name: str, host: str) -> Any:
    try:
        return _plain(templar.template(variables[name]))
    except Exception as exc:  # noqa: BLE001 - reported as data: the caller names host and variable
        raise SystemExit(json.dumps({"error": f"{host}: {name} does not render: {str(exc).splitlines()[0][:300]}"}))


def host_vars(manager: Any, loader: Any, host: Any, playbook_dir: str, secrets: bool) -> dict[str, Any]:
    """The rendered variables of host the fleet tools read."""
    from ansible.template import Templar

    variables = manager.get_vars(host=host, include_hostvars=False)
    variables.setdefault("playbook_dir", playbook_dir)
    templar = Templar(loader=loader, variables=variables)
    found: dict[str, Any] = {}
    for name, aliases in CONNECTION_VARS.items():
        source = next((n for n in (name, *aliases) if variables.get(n) not in (None, "")), None)
        if source is not None:
            found[name] = _render(templar, variables, source, host.name)
    for name in FLEET_VARS:
        if name in variables:
            found[name] = _render(templar, variables, name, host.name)
    for name in SECRET_VARS:
        if name in variables:
            found[f"{name}_set"] = True
            if secrets:
                found[name] = _render(templar, variables, name, host.name)
    return found


def listing(source: str, limit: str | None, playbook_dir: str, secrets: bool) -> dict[str, Any]:
    """The inventory's groups and rendered host variables (and, with limit, the hosts it selects)."""
    from ansible.inventory.manager import InventoryManager
    from ansible.vars.manager import VariableManager

    loader = _loader()
    inventory = InventoryManager(loader=loader, sources=[source])
    manager = VariableManager(loader=loader, inventory=inventory)
    data: dict[str, Any] = {}
    for name, group in inventory.groups.items():
        data[name] = {"hosts": [h.name for h in group.hosts], "children": [g.name for g in group.child_groups]}
    hosts = inventory.get_hosts()
    meta: dict[str, Any] = {"hostvars": {h.name: host_vars(manager, loader, h, playbook_dir, secrets) for h in hosts},
                            "defaults": _plain(_defaults())}
    if limit:
        inventory.subset(limit)
        meta["selected"] = [h.name for h in inventory.get_hosts()]
    data["_meta"] = meta
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inventory")
    parser.add_argument("--limit", default=None)
    parser.add_argument("--playbook-dir", default="")
    parser.add_argument("--secrets", action="store_true")
    options = parser.parse_args(argv)
    json.dump(listing(options.inventory, options.limit, options.playbook_dir, options.secrets), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
