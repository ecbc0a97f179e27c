"""``fleetctl bench``: print benchmark figures (they measure, they never pass or fail)."""
from __future__ import annotations

import argparse
import inspect

from fleetctl import bench
from fleetctl.cli.common import Output, whole
from fleetctl.errors import EXIT_OK, UsageError

EPILOG = f"""\
benchmarks: {', '.join(bench.NAMES)} (default: {' '.join(bench.DEFAULT)}; scale only when named or with
--hosts). They need root and the sandbox, and deploy the default sandbox fleet where they measure it.

exit status: 0 figures printed, 1 a benchmark could not run to its end, 2 usage error, 130 interrupted"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    summary = "print benchmark figures: sandbox boot, deploy, broadcast, health, restart, scale"
    parser = sub.add_parser("bench", help=summary, description=summary[0].upper() + summary[1:] + ".",
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run")
    parser.add_argument("--hosts", type=whole, default=None, metavar="N",
                        help="scale: hosts of the large fleet (one broker, N-1 workers; default 24)")
    parser.set_defaults(run=run)


def run(options: argparse.Namespace, out: Output) -> int:
    names = options.names or (["scale"] if options.hosts else list(bench.DEFAULT))
    unknown = [name for name in names if name not in bench.NAMES]
    if unknown:
        raise UsageError(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(bench.NAMES)}")
    functions = bench.benches()
    for name in names:
        out.line(f"== {name}")
        function = functions[name]
        kwargs = {"hosts": options.hosts} if options.hosts and "hosts" in inspect.signature(function).parameters else {}
        for label, value in function(**kwargs):
            out.line(f"  {label:<60} {value}")
    return EXIT_OK
