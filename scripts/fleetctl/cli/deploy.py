"""``fleetctl deploy``: converge the fleet with ansible-playbook, options passed through."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fleetctl import sandbox
from fleetctl.cli.common import Output, inventory_of
from fleetctl.deploy import is_sandbox, playbook_command, playbook_environment, split_extra
from fleetctl.errors import UsageError

EPILOG = """\
Runs playbooks/site.yml against the inventory, with the repository's ansible.cfg: preflight of every
host first (nothing changes when one is refused), then the broker, then the workers, restarting changed
worker hosts in batches. The sandbox inventory (the default) has its hosts booted first (root).
Everything after `--` goes to ansible-playbook as given:

  fleetctl deploy -- --tags configure -e celery_worker_serial=1 -v
  fleetctl deploy -i prod/hosts.yml -- --ask-vault-pass

exit status: ansible-playbook's own (0 done, 2 a host failed, 4 a host unreachable, ...), and 2 for a
usage error of fleetctl (inventory not found: nothing ran)"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    summary = "deploy the fleet (ansible-playbook site.yml): broker, workers, rolling restarts"
    parser = sub.add_parser("deploy", help=summary, description=summary[0].upper() + summary[1:] + ".",
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--inventory", default=None, metavar="PATH",
                        help="Ansible inventory (default: $ANSIBLE_INVENTORY, else the sandbox inventory)")
    parser.add_argument("-l", "--limit", default=None, metavar="PATTERN", help="only these hosts (--limit)")
    parser.add_argument("--check", action="store_true", help="dry run: --check --diff, nothing changes")
    parser.add_argument("--ansible-args", default="", metavar="TEXT", dest="ansible_args_text",
                        help="more ansible-playbook arguments as one string, split as a shell would (make's "
                             "ANSIBLE_ARGS)")
    parser.add_argument("ansible_args", nargs=argparse.REMAINDER, metavar="-- ARGS",
                        help="passed to ansible-playbook as they are")
    parser.set_defaults(run=run)


def run(options: argparse.Namespace, out: Output) -> int:
    inventory = inventory_of(options)
    rest = list(options.ansible_args)
    extra = split_extra(options.ansible_args_text) + (rest[1:] if rest[:1] == ["--"] else rest)
    command = playbook_command(inventory, options.limit, options.check, extra, Path(sys.executable).parent)
    if is_sandbox(inventory):
        if os.geteuid() != 0:
            raise UsageError("the sandbox inventory boots its hosts first, and that needs root")
        sandbox.up(Path(inventory), os.environ.get("SANDBOX_SUITE", "bookworm"), log=out.progress)
    os.execve(command[0], command, playbook_environment())
    return 1  # not reached: the playbook's own exit status ends the process
