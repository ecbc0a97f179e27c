"""The ``fleetctl`` command: one parser, one verb per module, one mapping from errors to exit codes."""
from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from fleetctl.cli import bench, broadcast, broker, deploy, health, release, restart, sandbox
from fleetctl.cli.common import Output
from fleetctl.concurrency import fast_exit
from fleetctl.errors import EXIT_CODES, EXIT_INTERRUPTED, FleetctlError
from fleetctl.inventory import redact

VERBS = (deploy, health, broadcast, restart, broker, sandbox, bench, release)


def _epilog() -> str:
    table = "\n".join(f"  {code:>3}  {words}" for code, words in EXIT_CODES.items())
    return f"exit status (every verb):\n{table}\n\n`fleetctl VERB --help` tells more of each verb."


def parser() -> argparse.ArgumentParser:
    """The whole command line: every verb and its options."""
    top = argparse.ArgumentParser(prog="fleetctl", description="Operate a bare-metal Celery fleet: deploy, "
                                  "health, broadcast, rolling restart, the local sandbox, benchmarks.",
                                  epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        verb.add_parser(sub)
    return top


def main(argv: Sequence[str] | None = None, out: Output | None = None) -> int:
    """Run one verb; its exit code (argparse's own errors exit 2 through SystemExit)."""
    out = out or Output()
    options = parser().parse_args(argv)
    try:
        return options.run(options, out)
    except FleetctlError as exc:
        out.error(redact(str(exc)))
        return exc.exit_code
    except KeyboardInterrupt:
        out.error("interrupted")
        return EXIT_INTERRUPTED


def run() -> None:
    """The console script: main(), then a fast exit (no module teardown once the output is out)."""
    # Ctrl-C must reach a rolling restart even when whoever started fleetctl ignored SIGINT (a shell
    # without job control does so for the commands it puts in the background): it gives queues back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        code = exc.code if isinstance(exc.code, int) else 2
    fast_exit(code)
