#!/usr/bin/env bash
# Deploy the fleet of an inventory: `make deploy [INVENTORY=path] [LIMIT=hosts] [CHECK=1] [ANSIBLE_ARGS=...]`.
# With the sandbox inventory (the default) the sandbox hosts are brought up first (that needs root);
# any other inventory deploys as whoever runs it. ANSIBLE_ARGS goes to ansible-playbook as it is
# (split as a shell would): --tags, -e, -v, --ask-vault-pass, --vault-password-file...
set -euo pipefail

cd "$(dirname "$0")/.."
sandbox_inventory=playbooks/inventories/sandbox/hosts.yml
inventory=${INVENTORY:-$sandbox_inventory}
venv=${VENV:-.venv}
export ANSIBLE_CONFIG="$PWD/ansible.cfg"

if [ ! -e "$inventory" ]; then
  echo "deploy: error: inventory $inventory: no such file or directory" >&2
  exit 2
fi

args=(--inventory "$inventory")
if [ -n "${LIMIT:-}" ]; then
  args+=(--limit "$LIMIT")
fi
case "${CHECK:-}" in
  "" | 0 | no | false) ;;
  *) args+=(--check) ;;
esac

if [ "$(realpath "$inventory")" = "$(realpath "$sandbox_inventory")" ]; then
  scripts/system-packages.sh sandbox
fi

# fleetctl deploy boots the sandbox's hosts (sandbox inventory only) and runs ansible-playbook.
# `=`: ANSIBLE_ARGS may start with a dash (-v, --tags ...), which would read as an option of its own.
exec "$venv/bin/fleetctl" deploy "${args[@]}" "--ansible-args=${ANSIBLE_ARGS:-}"
