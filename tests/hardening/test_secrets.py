"""The broker and Flower passwords show in no deploy output, log, journal, process list, git commit or readable file."""
# The password is read from the controller's secrets file and compared here or, on a host, by a script
# that reads it from the standard input of ssh (never an argument); failures show it as <password>.

from __future__ import annotations

import secrets
import shlex
import subprocess
from dataclasses import dataclass, field

import pytest

from support.deploy import ROOT, SANDBOX_INVENTORY, inventory_hostvars, recap
from support.fleet import BIN, Fleet, run

HOSTS = ["broker", "worker1", "worker2"]
WORKERS = ["worker1", "worker2"]
PASSWORD_FILE = ROOT / ".secrets" / "sandbox" / "rabbitmq-celery-password"
ENV_FILE = "/etc/conf.d/celery"
FLOWER_HOST = "worker2"  # group flower of the sandbox inventory
FLOWER_PASSWORD_FILE = ROOT / ".secrets" / "sandbox" / "flower-password"
FLOWER_ENV_FILE = "/etc/conf.d/flower"  # holds both passwords
# Where a leaked copy would obviously sit on a host (pseudo file systems left out).
SCANNED = "/etc /var /opt /run /root /home /srv /tmp"
# Samples `ps -eo args` (20 a second) during a deploy, into a file only root reads; ends by itself.
_SAMPLER_UNIT = "fleet-test-ps-sampler"
_SAMPLES = "/root/fleet-test-ps-samples"
_SAMPLER = (f"systemd-run --quiet --collect --unit={_SAMPLER_UNIT} -p RuntimeMaxSec=900 /bin/sh -c "
            f"'umask 077; while :; do ps -eo args; sleep 0.05; done > {_SAMPLES}'")


def _password() -> str:
    return PASSWORD_FILE.read_text().strip()


def _flower_password() -> str:
    return FLOWER_PASSWORD_FILE.read_text().strip()


def _where(text: str, password: str) -> list[str]:
    """Lines of text holding the password, with the password replaced (safe to print)."""
    return [f"line {n}: {line.replace(password, '<password>')[:300]}"
            for n, line in enumerate(text.splitlines(), 1) if password in line]


def _ssh(hostname: str, command: str, stdin: str = "") -> subprocess.CompletedProcess:
    """Run command as root on a sandbox host over ssh; stdin (a secret) never reaches a command line."""
    hv = inventory_hostvars()[hostname]
    args = ["ssh", "-i", hv["ansible_ssh_private_key_file"], *shlex.split(hv["ansible_ssh_common_args"]),
            "-o", "BatchMode=yes", f"{hv['ansible_user']}@{hv['ansible_host']}", command]
    return subprocess.run(args, input=stdin, text=True, capture_output=True, timeout=300)


def _on_host(hostname: str, script: str, password: str) -> list[str]:
    """Output lines of a bash script on the host that finds the password in $pw (read from stdin)."""
    # `pattern` prints it with bash's printf builtin; grep reads it from a pipe: in no argv, no file.
    wrapped = f"IFS= read -r pw; pattern() {{ printf '%s\\n' \"$pw\"; }}; {script}"
    run = _ssh(hostname, f"bash -c {shlex.quote(wrapped)}", password + "\n")
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines()


def _lines_holding(hostname: str, command: str, password: str) -> list[str]:
    """Lines of command's output on the host that hold the password, the password replaced (safe to print)."""
    return _on_host(hostname, f"{{ {command}; }} 2>/dev/null | grep -nF -f <(pattern) | while IFS= read -r line; "
                              "do line=${line//\"$pw\"/<password>}; printf '%s\\n' \"${line:0:300}\"; done", password)


def _deploy(check: bool = False, options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`make deploy` of the sandbox fleet; with options, ansible-playbook itself (make's sandbox-up reads no -v)."""
    if options:
        return run([str(BIN / "ansible-playbook"), "-i", str(SANDBOX_INVENTORY), *options, "playbooks/site.yml"],
                   merge=True)
    return Fleet.named("sandbox").deploy(check=check)


def _succeeded(run: subprocess.CompletedProcess) -> str:
    """The output of a deploy that must have succeeded (the password redacted in the failure)."""
    assert run.returncode == 0, run.stdout[-3000:].replace(_password(), "<password>")
    return run.stdout


@dataclass
class ExposedDeploys:
    """Outputs of deploys that had to write the password, and what the process samplers caught."""

    check_output: str = field(repr=False)
    verbose_output: str = field(repr=False)
    sampled: dict[str, list[str]]
    sampled_rabbitmqctl: bool
    sampled_flower: dict[str, list[str]]  # lines holding the Flower password


@pytest.fixture(scope="module")
def exposed_deploys(deployed_fleet) -> ExposedDeploys:
    """Deploys that must write the passwords: worker1 lost its broker URL line, the broker its celery password,
    the Flower host Flower's credentials.

    `make deploy CHECK=1` shows what would change; a -vvv --diff deploy, sampled by `ps` on every host, repairs it.
    """
    password = _password()
    assert _ssh("worker1", f"sed -i '/^CELERY_BROKER_URL=/d' {ENV_FILE}").returncode == 0
    assert _ssh("broker", "rabbitmqctl -q change_password celery", secrets.token_urlsafe(24) + "\n").returncode == 0
    assert _ssh(FLOWER_HOST, f"sed -i '/^FLOWER_BASIC_AUTH=/d' {FLOWER_ENV_FILE}").returncode == 0
    verbose = None
    try:
        check = _succeeded(_deploy(check=True))  # --check --diff
        for hostname in HOSTS:
            assert _ssh(hostname, f"rm -f {_SAMPLES}; {_SAMPLER}").returncode == 0
        verbose = _deploy(options=("-vvv", "--diff"))
    finally:
        for hostname in HOSTS:
            _ssh(hostname, f"systemctl stop {_SAMPLER_UNIT}")
        if verbose is None or verbose.returncode != 0:
            _succeeded(_deploy())  # the fleet as the other tests expect it
    sampled = {h: _lines_holding(h, f"cat {_SAMPLES}", password) for h in HOSTS}
    sampled_flower = {h: _lines_holding(h, f"cat {_SAMPLES}", _flower_password()) for h in HOSTS}
    saw_rabbitmqctl = _ssh("broker", f"grep -c rabbitmqctl {_SAMPLES}").stdout.strip() not in ("", "0")
    for hostname in HOSTS:
        _ssh(hostname, f"rm -f {_SAMPLES}")
    return ExposedDeploys(check, _succeeded(verbose), sampled, saw_rabbitmqctl, sampled_flower)


def test_deploy_output_never_shows_the_broker_password(deployed_fleet):
    assert _where(deployed_fleet.deploy_output, _password()) == []


def test_check_mode_diff_of_the_env_file_never_shows_the_broker_password(exposed_deploys):
    assert recap(exposed_deploys.check_output)["worker1"]["changed"] > 0  # the env file would change
    assert _where(exposed_deploys.check_output, _password()) == []


def test_verbose_deploy_that_rewrites_the_password_never_shows_it(exposed_deploys):
    summary = recap(exposed_deploys.verbose_output)
    assert summary["broker"]["changed"] > 0 and summary["worker1"]["changed"] > 0  # both were repaired
    assert _where(exposed_deploys.verbose_output, _password()) == []


@pytest.mark.parametrize("hostname", HOSTS)
def test_no_command_line_shows_the_broker_password_during_a_deploy(exposed_deploys, hostname):
    assert exposed_deploys.sampled_rabbitmqctl  # the samples did cover the broker's user management
    assert exposed_deploys.sampled[hostname] == []


@pytest.mark.parametrize("hostname", HOSTS)
def test_no_running_process_shows_the_broker_password(exposed_deploys, hostname):
    assert _lines_holding(hostname, "ps -eo args", _password()) == []


def test_no_controller_process_shows_the_broker_password(exposed_deploys):
    args = subprocess.run(["ps", "-eo", "args"], text=True, capture_output=True, check=True).stdout
    assert _where(args, _password()) == []


@pytest.mark.parametrize("hostname", HOSTS)
def test_logs_and_journal_never_show_the_broker_password(exposed_deploys, hostname):
    password = _password()
    assert _lines_holding(hostname, "journalctl --no-pager -o verbose", password) == []
    assert _lines_holding(hostname, "cat /var/log/celery/* /var/log/rabbitmq/*", password) == []


@pytest.mark.parametrize("hostname", HOSTS)
def test_only_root_and_group_celery_read_files_holding_the_broker_password(exposed_deploys, hostname):
    found = _on_host(hostname, f"grep -rlsF -D skip -f <(pattern) {SCANNED} | while IFS= read -r f; "
                               "do stat -c '%n %U %G %a' \"$f\"; done", _password())
    holders = {line.split()[0]: line.split()[1:] for line in found}
    # Flower reaches the broker as the fleet's user: its environment file, for group flower only.
    allowed = {FLOWER_ENV_FILE: ("flower",)} if hostname == FLOWER_HOST else {}
    assert {path: mode for path, (user, group, mode) in holders.items()
            if user != "root" or group not in allowed.get(path, ("root", "celery")) or int(mode, 8) & 0o027} == {}
    assert [path for path in holders if path.startswith("/var/log/")] == []
    if hostname in WORKERS:
        assert holders.get(ENV_FILE) == ["root", "celery", "640"]
    if hostname == FLOWER_HOST:
        assert holders.get(FLOWER_ENV_FILE) == ["root", "flower", "640"]


def test_password_file_is_private_git_ignored_and_in_no_commit_or_tracked_file(deployed_fleet):
    password = _password().encode()
    assert PASSWORD_FILE.stat().st_mode & 0o077 == 0 and PASSWORD_FILE.parent.stat().st_mode & 0o077 == 0
    assert subprocess.run(["git", "check-ignore", "-q", str(PASSWORD_FILE)], cwd=ROOT).returncode == 0
    history = subprocess.run(["git", "log", "--all", "-p", "--text", "--no-color", "--no-ext-diff"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    in_history = password in history  # a bool: assert messages never show the password
    assert not in_history
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    holders = [name for name in tracked.decode().split("\0")
               if name and (ROOT / name).is_file() and password in (ROOT / name).read_bytes()]
    assert holders == []


# The Flower password (group flower: worker2).

def test_deploy_outputs_never_show_the_flower_password(deployed_fleet, exposed_deploys):
    password = _flower_password()
    assert recap(exposed_deploys.verbose_output)[FLOWER_HOST]["changed"] > 0  # its credentials were rewritten
    for output in (deployed_fleet.deploy_output, exposed_deploys.check_output, exposed_deploys.verbose_output):
        assert _where(output, password) == []


@pytest.mark.parametrize("hostname", HOSTS)
def test_no_command_line_log_or_journal_shows_the_flower_password(exposed_deploys, hostname):
    password = _flower_password()
    assert exposed_deploys.sampled_flower[hostname] == []
    assert _lines_holding(hostname, "ps -eo args", password) == []
    assert _lines_holding(hostname, "journalctl --no-pager -o verbose", password) == []
    assert _lines_holding(hostname, "cat /var/log/celery/* /var/log/rabbitmq/*", password) == []


def test_only_root_and_group_flower_read_the_flower_password(exposed_deploys):
    found = _on_host(FLOWER_HOST, f"grep -rlsF -D skip -f <(pattern) {SCANNED} | while IFS= read -r f; "
                                  "do stat -c '%n %U %G %a' \"$f\"; done", _flower_password())
    assert found == [f"{FLOWER_ENV_FILE} root flower 640"]


def test_flower_password_file_is_private_git_ignored_and_in_no_commit(deployed_fleet):
    password = _flower_password().encode()
    assert FLOWER_PASSWORD_FILE.stat().st_mode & 0o077 == 0
    assert subprocess.run(["git", "check-ignore", "-q", str(FLOWER_PASSWORD_FILE)], cwd=ROOT).returncode == 0
    history = subprocess.run(["git", "log", "--all", "-p", "--text", "--no-color", "--no-ext-diff"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    in_history = password in history  # a bool: assert messages never show the password
    assert not in_history
