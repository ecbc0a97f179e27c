"""What `make deploy` leaves on the sandbox hosts: users, directories, files, services, broker, nodes."""

from __future__ import annotations

import json

import pytest

from support.deploy import ENV_FILE, OPERATOR, ROOT, active_queues, inventory_hostvars, pinged_nodes

WORKERS = ["worker1", "worker2"]
BEAT_HOST = "worker2"
DEFAULT_NODES = [{"name": "celery", "queues": ["celery"], "concurrency": 2}]
BROADCAST = ["broadcast"]
TIME_LIMIT, SOFT_TIME_LIMIT, STOP_MARGIN = 300, 240, 30  # the role's defaults


def _nodes(hostname: str) -> list[dict]:
    """The host's celery_worker_nodes in the sandbox inventory (the role default when it sets none)."""
    return inventory_hostvars().get(hostname, {}).get("celery_worker_nodes", DEFAULT_NODES)


def _env(worker) -> dict[str, str]:
    """KEY -> value of /etc/conf.d/celery, as sh sees it (read as root)."""
    lines = worker.check_output(f"cat {ENV_FILE}").splitlines()
    pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#") and "=" in line)
    return {key: value.strip('"') for key, value in pairs}


@pytest.mark.parametrize("hostname", WORKERS)
def test_celery_user_is_a_system_user_without_login_shell(deployed_fleet, hostname):
    user = deployed_fleet.host(hostname).user("celery")
    assert user.exists
    assert user.group == "celery"
    assert user.shell in ("/usr/sbin/nologin", "/sbin/nologin")
    assert user.uid < 1000


@pytest.mark.parametrize("hostname", WORKERS)
@pytest.mark.parametrize("path, mode", [("/run/celery", 0o755), ("/var/log/celery", 0o755),
                                        ("/var/lib/celery", 0o750)])
def test_runtime_log_and_state_directories_belong_to_celery(deployed_fleet, hostname, path, mode):
    directory = deployed_fleet.host(hostname).file(path)
    assert directory.is_directory
    assert (directory.user, directory.group, directory.mode) == ("celery", "celery", mode)


@pytest.mark.parametrize("hostname", WORKERS)
def test_tmpfiles_entry_declares_the_celery_directories(deployed_fleet, hostname):
    worker = deployed_fleet.host(hostname)
    declared = worker.check_output("systemd-tmpfiles --cat-config | grep -E '^d +/(run|var/log|var/lib)/celery '")
    assert {line.split()[1] for line in declared.splitlines()} == {"/run/celery", "/var/log/celery", "/var/lib/celery"}
    assert worker.run("systemd-tmpfiles --create /etc/tmpfiles.d/celery.conf").rc == 0


@pytest.mark.parametrize("hostname", WORKERS)
def test_env_file_is_readable_by_root_and_group_celery_only(deployed_fleet, hostname):
    env_file = deployed_fleet.host(hostname).file(ENV_FILE)
    assert (env_file.user, env_file.group, env_file.mode) == ("root", "celery", 0o640)


@pytest.mark.parametrize("hostname", WORKERS)
def test_env_file_names_the_nodes_their_queues_and_concurrency(deployed_fleet, hostname):
    env = _env(deployed_fleet.host(hostname))
    nodes = _nodes(hostname)
    assert env["CELERYD_NODES"].split() == [f"{n['name']}@{hostname}" for n in nodes]
    assert env["CELERYD_OPTS"] == " ".join(
        [f"-Q:{n['name']} {','.join(n['queues'] + BROADCAST)} -c:{n['name']} {n['concurrency']}" for n in nodes]
        + [f"--time-limit={TIME_LIMIT} --soft-time-limit={SOFT_TIME_LIMIT}"])
    assert env["CELERY_BROADCAST_QUEUES"] == ",".join(BROADCAST)
    assert (env["CELERY_APP"], env["CELERY_BIN"]) == ("celery_app", "/opt/celery/venv/bin/celery")
    assert env["CELERYD_PID_FILE"] == "/run/celery/%n.pid"
    assert env["CELERYD_LOG_FILE"] == "/var/log/celery/%n%I.log"
    assert env["CELERYD_LOG_LEVEL"] == "INFO"
    assert env["CELERYBEAT_SCHEDULE_FILE"].startswith("/var/lib/celery/")
    assert {"CELERYBEAT_PID_FILE", "CELERYBEAT_LOG_FILE"} <= set(env)


@pytest.mark.parametrize("hostname", WORKERS)
def test_env_file_holds_the_broker_url_with_the_generated_password(deployed_fleet, hostname):
    password = (ROOT / ".secrets" / "sandbox" / "rabbitmq-celery-password").read_text().strip()
    broker = inventory_hostvars()["broker"]["ansible_host"]
    url = _env(deployed_fleet.host(hostname))["CELERY_BROKER_URL"]
    matches = url == f"amqp://celery:{password}@{broker}:5672/celery"  # compared here: never printed
    assert len(password) >= 16
    assert matches, "CELERY_BROKER_URL is not amqp://celery:<generated password>@<broker address>:5672/celery"


def test_broker_password_file_is_private_to_the_controller_user(deployed_fleet):
    secret = ROOT / ".secrets" / "sandbox" / "rabbitmq-celery-password"
    assert secret.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("hostname", WORKERS)
def test_celery_service_is_enabled_and_running_on_every_worker(deployed_fleet, hostname):
    service = deployed_fleet.host(hostname).service("celery")
    assert service.is_enabled
    assert service.is_running


@pytest.mark.parametrize("hostname", WORKERS)
def test_every_node_runs_in_its_own_enabled_unit_whose_main_pid_is_the_worker(deployed_fleet, hostname):
    worker = deployed_fleet.host(hostname)
    wanted = worker.check_output("ls /etc/systemd/system/celery.service.wants/").split()
    assert sorted(wanted) == sorted(f"celery@{n['name']}.service" for n in _nodes(hostname))
    for node in _nodes(hostname):
        unit = f"celery@{node['name']}.service"
        assert worker.service(unit).is_enabled and worker.service(unit).is_running
        main_pid = worker.check_output(f"systemctl show -p MainPID --value {unit}")
        assert main_pid == worker.check_output(f"cat /run/celery/{node['name']}.pid")
        assert f" -n {node['name']}@{hostname} " in worker.check_output(f"tr '\\0' ' ' < /proc/{main_pid}/cmdline")


@pytest.mark.parametrize("hostname", WORKERS)
def test_node_units_stop_warm_within_the_task_time_limit_and_restart_on_crash(deployed_fleet, hostname):
    worker = deployed_fleet.host(hostname)
    for node in _nodes(hostname):
        shown = worker.check_output(f"systemctl show -p KillMode -p TimeoutStopUSec -p Restart -p PartOf "
                                    f"-p ExecStop celery@{node['name']}.service")
        props = dict(line.split("=", 1) for line in shown.splitlines())
        assert props["KillMode"] == "mixed"  # SIGTERM to the worker only: its pool processes finish their tasks
        assert props["TimeoutStopUSec"] == "5min 30s"  # TIME_LIMIT + STOP_MARGIN
        assert props["Restart"] == "always"
        assert props["PartOf"] == "celery.service"
        assert props.get("ExecStop", "") == ""


@pytest.mark.parametrize("hostname", ["broker", *WORKERS])
def test_beat_runs_on_the_beat_host_only(deployed_fleet, hostname):
    host = deployed_fleet.host(hostname)
    service = host.service("celerybeat")
    if hostname == BEAT_HOST:
        assert service.is_enabled and service.is_running
        assert host.file("/run/celery/celerybeat.pid").exists
    else:
        assert not host.file("/etc/systemd/system/celerybeat.service").exists
        assert not service.is_running
        assert host.exists("pgrep")
        assert host.run("pgrep -f 'celery.* beat '").rc == 1


def test_broker_runs_with_the_celery_vhost_and_user_and_without_guest(deployed_fleet):
    broker = deployed_fleet.host("broker")
    assert broker.service("rabbitmq-server").is_enabled
    assert broker.service("rabbitmq-server").is_running
    users = {u["user"] for u in json.loads(broker.check_output("rabbitmqctl -q list_users --formatter json"))}
    assert "celery" in users
    assert "guest" not in users
    vhosts = {v["name"] for v in json.loads(broker.check_output("rabbitmqctl -q list_vhosts --formatter json"))}
    assert "celery" in vhosts
    permissions = json.loads(broker.check_output("rabbitmqctl -q list_permissions -p celery --formatter json"))
    assert [p["user"] for p in permissions] == ["celery"]  # least permissions: tests/rabbitmq/test_broker_hardened.py


@pytest.mark.parametrize("hostname", WORKERS)
def test_logrotate_configuration_is_valid(deployed_fleet, hostname):
    worker = deployed_fleet.host(hostname)
    assert worker.package("logrotate").is_installed
    check = worker.run("logrotate -d /etc/logrotate.d/celery")
    assert check.rc == 0, check.stderr
    assert "error" not in (check.stdout + check.stderr).lower()
    assert "/var/log/celery/*.log" in check.stdout + check.stderr


@pytest.mark.parametrize("hostname", WORKERS)
def test_every_node_consumes_exactly_its_queues_plus_the_broadcast_queues(deployed_fleet, hostname):
    queues = active_queues(deployed_fleet.host(hostname), [f"{n['name']}@{hostname}" for n in _nodes(hostname)])
    assert set(queues) == {f"{n['name']}@{hostname}" for n in _nodes(hostname)}
    for node in _nodes(hostname):
        assert queues[f"{node['name']}@{hostname}"] == set(node["queues"] + BROADCAST)


@pytest.mark.parametrize("hostname", WORKERS)
@pytest.mark.parametrize("user", ["root", "celery"])
def test_operator_ping_works_from_any_directory_as_root_and_as_celery(deployed_fleet, hostname, user):
    worker = deployed_fleet.host(hostname)
    nodes = ",".join(f"{n['name']}@{hostname}" for n in _nodes(hostname))
    command = f"cd /tmp && {OPERATOR} inspect ping -d {nodes}"
    if user == "celery":
        command = f"su -s /bin/sh celery -c '{command}'"
    result = worker.run(command)
    assert result.rc == 0, result.stdout + result.stderr
    assert result.stdout.count(": OK") == len(_nodes(hostname))


@pytest.mark.parametrize("hostname", WORKERS)
def test_app_and_pinned_requirements_are_installed_in_the_virtualenv(deployed_fleet, hostname):
    worker = deployed_fleet.host(hostname)
    pins = [line.split("#")[0].strip() for line in
            (ROOT / "celery_app" / "requirements.txt").read_text().splitlines()]
    frozen = set(worker.check_output("/opt/celery/venv/bin/python -m pip freeze --all").lower().splitlines())
    assert {p.lower() for p in pins if p} <= frozen
    imported = worker.check_output("cd / && su -s /bin/sh celery -c '/opt/celery/venv/bin/python -c "
                                   "\"import celery_app; print(celery_app.__file__)\"'")
    assert imported.strip() == "/opt/celery/app/celery_app/__init__.py"


@pytest.mark.parametrize("hostname", ["broker", *WORKERS])
def test_apt_and_pip_go_through_the_package_proxy(deployed_fleet, hostname):
    host = deployed_fleet.host(hostname)
    proxy = inventory_hostvars()[hostname]["fleet_http_proxy"]
    assert f'Acquire::http::Proxy "{proxy}";' in host.check_output("apt-config dump")
    pip_conf = host.file("/etc/pip.conf")
    assert pip_conf.contains(f"proxy = {proxy}")
    assert pip_conf.contains("cert = /usr/local/share/fleet-ca-bundle.pem")
    assert host.file("/usr/local/share/fleet-ca-bundle.pem").is_file


def test_every_inventory_node_answers_ping_by_its_full_name(deployed_fleet):
    expected = {f"{n['name']}@{h}" for h in WORKERS for n in _nodes(h)}
    assert pinged_nodes(deployed_fleet.host("worker1")) == expected
