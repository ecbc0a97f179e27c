"""The fleetctl command line: every verb's --help, the shared exit codes, options refused before any work."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fleetctl.cli import VERBS, main, parser
from fleetctl.cli.common import Output
from fleetctl.cli.restart import event_json, event_text
from fleetctl.deploy import PLAYBOOK, playbook_command, playbook_environment, split_extra
from fleetctl.errors import EXIT_CODES, EXIT_INTERRUPTED, EXIT_UNAVAILABLE, EXIT_USAGE
from fleetctl.paths import SANDBOX_INVENTORY, default_inventory
from fleetctl.restart import Event

ROOT = Path(__file__).resolve().parents[2]
FLEETCTL = ROOT / ".venv" / "bin" / "fleetctl"
HELP = [["--help"], *[[verb, "--help"] for verb in ("deploy", "health", "status", "broadcast", "restart", "bench")],
        ["sandbox", "--help"], ["sandbox", "up", "--help"], ["sandbox", "down", "--help"],
        ["sandbox", "status", "--help"], ["broker", "--help"], ["broker", "restart", "--help"]]


def _run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(FLEETCTL), *args], capture_output=True, text=True, timeout=60, cwd="/", **kwargs)


def _main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        code = main(argv, Output(out, err))
    except SystemExit as exit_:
        code = exit_.code
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("argv", HELP, ids=" ".join)
def test_every_verb_help_exits_0_and_names_the_exit_codes(argv):
    done = _run(*argv)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: fleetctl") and not done.stderr
    if argv[0] != "sandbox" or len(argv) == 2:
        assert "exit status" in done.stdout


def test_python_m_fleetctl_is_the_same_command():
    done = subprocess.run([sys.executable, "-m", "fleetctl", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "health" in done.stdout and "restart" in done.stdout


def test_every_verb_is_listed_in_the_top_level_help():
    text = parser().format_help()
    for verb in ("deploy", "health", "status", "broadcast", "restart", "broker", "sandbox", "bench", "release",
                 "rollback"):
        assert f"\n    {verb}" in text
    assert len(VERBS) == 8


def test_the_exit_code_table_is_shared_by_every_verb():
    assert sorted(EXIT_CODES) == [0, 1, 2, 3, 130]
    text = parser().format_help()
    for code in EXIT_CODES:
        assert f"{code:>3}  " in text


@pytest.mark.parametrize("argv", [["health", "--format", "xml"], ["health", "--ping-timeout", "0"],
                                  ["restart", "--serial", "0"], ["restart", "--drain-timeout", "-1"],
                                  ["broadcast"], ["broadcast", "--task", "host_report", "--timeout", "nan"],
                                  ["no-such-verb"], ["sandbox"], ["bench", "--hosts", "x"]])
def test_bad_options_exit_2_before_any_work(argv):
    code, _, _ = _main(argv)
    assert code == EXIT_USAGE


def test_bad_broadcast_task_and_arguments_are_refused_before_the_inventory_is_read():
    code, _, err = _main(["broadcast", "--inventory", "/nonexistent", "--task", "no_such_task"])
    assert code == EXIT_USAGE and "unknown maintenance task 'no_such_task'" in err
    code, _, err = _main(["broadcast", "--inventory", "/nonexistent", "--task", "disk_check", "--args", "[1, 2, 3, 4]"])
    assert code == EXIT_USAGE and "ARGS do not fit" in err


def test_deploy_of_a_missing_inventory_or_unbalanced_quotes_is_a_usage_error(tmp_path):
    code, _, err = _main(["deploy", "--inventory", str(tmp_path / "none.yml")])
    assert code == EXIT_USAGE and "none.yml: no such file" in err
    (tmp_path / "hosts.yml").write_text("all: {}\n")
    code, _, err = _main(["deploy", "--inventory", str(tmp_path / "hosts.yml"), "--ansible-args", "-e 'a=1"])
    assert code == EXIT_USAGE and "ANSIBLE_ARGS" in err


def test_deploy_passes_limit_check_and_every_ansible_argument_through(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all: {}\n")
    extra = split_extra("--tags configure -e 'celery_worker_serial=1 x=2'") + ["-v"]
    command = playbook_command(str(inventory), "w1,w2", True, extra, "/venv/bin")
    assert command == ["/venv/bin/ansible-playbook", "-i", str(inventory), "--limit", "w1,w2", "--check", "--diff",
                       "--tags", "configure", "-e", "celery_worker_serial=1 x=2", "-v", str(PLAYBOOK)]
    assert playbook_environment({"PATH": "/bin"})["ANSIBLE_CONFIG"].endswith("ansible.cfg")
    assert playbook_environment({"ANSIBLE_CONFIG": "/mine.cfg"})["ANSIBLE_CONFIG"] == "/mine.cfg"
    options = parser().parse_args(["deploy", "--check", "--", "--tags", "x"])
    assert options.check and options.ansible_args == ["--", "--tags", "x"]


def test_ansible_args_that_start_with_a_dash_reach_the_playbook_as_make_deploy_passes_them():
    """scripts/deploy.sh hands ANSIBLE_ARGS over as --ansible-args=TEXT: `-v` is not read as an option."""
    script = (Path(__file__).resolve().parents[2] / "scripts" / "deploy.sh").read_text()
    assert '"--ansible-args=${ANSIBLE_ARGS:-}"' in script
    for text in ("-v", "--tags configure -v"):
        assert parser().parse_args(["deploy", f"--ansible-args={text}"]).ansible_args_text == text


def test_unknown_benchmark_is_a_usage_error():
    code, _, err = _main(["bench", "nonsense"])
    assert code == EXIT_USAGE and "unknown benchmark nonsense" in err


def test_missing_inventory_is_a_usage_error_and_an_unusable_one_is_unavailable(tmp_path):
    code, _, err = _main(["status", "--inventory", str(tmp_path / "none.yml")])
    assert code == EXIT_USAGE and "none.yml" in err
    broken = tmp_path / "broken" / "hosts.yml"
    broken.parent.mkdir()
    broken.write_text("all: [unclosed\n")
    code, _, err = _main(["restart", "--inventory", str(broken)])
    assert code == EXIT_UNAVAILABLE and err.startswith("error: ")


def test_an_inventory_without_a_broker_password_is_unavailable_and_says_how_to_get_one(tmp_path):
    inventory = tmp_path / "nopass" / "hosts.yml"
    inventory.parent.mkdir()
    inventory.write_text("all:\n  children:\n    rabbitmq:\n      hosts:\n        mq:\n"
                         "    celery_workers:\n      hosts:\n        w1:\n")
    code, _, err = _main(["health", "--inventory", str(inventory)])
    assert code == EXIT_UNAVAILABLE and "no broker URL" in err and "deploy first" in err


def test_a_limit_that_matches_no_host_is_a_usage_error(tmp_path):
    inventory = tmp_path / "lim" / "hosts.yml"
    inventory.parent.mkdir()
    inventory.write_text("all:\n  children:\n    celery_workers:\n      hosts:\n        w1:\n        w2:\n")
    code, _, err = _main(["health", "--inventory", str(inventory), "--limit", "nothing*"])
    assert code == EXIT_USAGE and "--limit 'nothing*' matches no host" in err


def test_inventory_defaults_to_ansible_inventory_then_the_sandbox():
    assert default_inventory({}) == str(SANDBOX_INVENTORY)
    assert default_inventory({"ANSIBLE_INVENTORY": "/etc/fleet/prod.yml,/other"}) == "/etc/fleet/prod.yml"


def test_ctrl_c_exits_130(monkeypatch):
    def interrupted(options, out):
        raise KeyboardInterrupt

    monkeypatch.setattr("fleetctl.cli.health.run", interrupted)
    code, _, err = _main(["status"])
    assert code == EXIT_INTERRUPTED and "interrupted" in err


def test_restart_events_are_one_json_object_per_line_and_a_sentence_each():
    event = Event("drain", 1, "w1", {"seconds": 0.25, "tasks_left": 2, "error": None})
    out = io.StringIO()
    Output(out).event(event_json(event))
    line = out.getvalue()
    assert line.count("\n") == 1
    assert json.loads(line) == {"event": "drain", "batch": 1, "host": "w1", "seconds": 0.25, "tasks_left": 2,
                                "error": None}
    assert event_text(event) == "  w1: drained in 0.2 s, 2 task(s) left to the warm shutdown"


def test_colour_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert Output(io.StringIO()).status("FAIL", 6) == "FAIL  "
    coloured = Output(Terminal()).status("FAIL", 6)
    assert coloured.startswith("\033[") and "FAIL  " in coloured
