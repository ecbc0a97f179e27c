#!/usr/bin/env bash
# Install the controller's system packages (Debian/Ubuntu) that a use of the toolkit needs, when any is
# missing: `scripts/system-packages.sh controller|sandbox|lint|test...` (one or more sets).
#   controller  deploy and operate any fleet (a virtualenv, ssh): root only when something is missing
#   sandbox     boot the local sandbox fleet (containers, bridge, proxy): root
#   lint        shellcheck, promtool (Debian's prometheus: its service is left stopped)
#   test        everything the test suite needs (the sandbox, a loopback RabbitMQ, openssl, a headless browser)
set -euo pipefail
declare -A sets=(
  [controller]="python3-venv openssh-client"
  [sandbox]="systemd-container debootstrap tinyproxy iproute2 openssh-client"
  [lint]="shellcheck prometheus"
  [test]="systemd-container debootstrap tinyproxy iproute2 openssh-client python3-venv rabbitmq-server openssl shellcheck prometheus chromium"
)
packages=()
for set in "${@:-controller}"; do
  if [ -z "${sets[$set]+x}" ]; then
    echo "error: unknown package set '$set' (known: ${!sets[*]})" >&2
    exit 2
  fi
  read -r -a more <<< "${sets[$set]}"
  packages+=("${more[@]}")
done
# One dpkg-query for all of them: every make target runs this check (eight calls cost 0.13 s).
installed=" $(dpkg-query -W -f='${Status} ${Package}\n' "${packages[@]}" 2>/dev/null | sed -n 's/^install ok installed //p' | tr '\n' ' ' || true)"
missing=()
for p in "${packages[@]}"; do
  [[ $installed == *" $p "* || " ${missing[*]} " == *" $p "* ]] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "error: system packages missing (${missing[*]}); run as root or install them with apt-get" >&2
  exit 2
fi
echo "Installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d keeps package installs from starting services (rabbitmq, tinyproxy, prometheus) on the
# controller; where there is none, they are stopped and disabled here.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
systemctl disable --now tinyproxy >/dev/null 2>&1 || true
if [[ " ${missing[*]} " == *" prometheus "* ]]; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
