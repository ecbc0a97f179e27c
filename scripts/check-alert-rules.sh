#!/usr/bin/env bash
# `make lint`: render the fleet's alert rules (conf.d/prometheus/fleet-rules.yml.j2) with the prometheus
# role's defaults, the way the deploy does (Ansible's template module), and check them with promtool.
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/lint
mkdir -p "$out"
ANSIBLE_CONFIG=ansible.cfg .venv/bin/ansible localhost -i localhost, -c local \
  -m ansible.builtin.template -a "src=conf.d/prometheus/fleet-rules.yml.j2 dest=$out/fleet-rules.yml mode=0644" \
  -e @playbooks/roles/prometheus/defaults/main.yml >/dev/null
promtool check rules "$out/fleet-rules.yml"
