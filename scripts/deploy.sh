#!/usr/bin/env bash
# Deploy the fleet of an inventory: `make deploy [INVENTORY=path] [LIMIT=hosts] [CHECK=1] [ANSIBLE_ARGS=...]`.
# With the sandbox inventory (the default) the sandbox hosts are brought up first (that needs root);
# any other inventory deploys as whoever runs it. ANSIBLE_ARGS goes to ansible-playbook as it is
# (split on spaces): --tags, -e, -v, --ask-vault-pass, --vault-password-file...
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

args=(-i "$inventory")
if [ -n "${LIMIT:-}" ]; then
  args+=(--limit "$LIMIT")
fi
case "${CHECK:-}" in
  "" | 0 | no | false) ;;
  *) args+=(--check --diff) ;;
esac

if [ -n "${ANSIBLE_ARGS:-}" ]; then
  read -r -a extra <<< "$ANSIBLE_ARGS"
  args+=("${extra[@]}")
fi

if [ "$(realpath "$inventory")" = "$(realpath "$sandbox_inventory")" ]; then
  scripts/system-packages.sh sandbox
  "$venv/bin/fleetctl" sandbox up "$inventory"
fi

exec "$venv/bin/ansible-playbook" "${args[@]}" playbooks/site.yml
