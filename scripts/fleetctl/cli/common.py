"""What every verb shares: the fleet options, argument types, and a TTY-aware output."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, TextIO

from fleetctl.paths import default_inventory


def positive(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def whole(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {text!r}")
    return int(text)


def add_fleet_options(parser: argparse.ArgumentParser, formats: tuple[str, ...] = ("text", "json")) -> None:
    """--inventory, --limit and --format, the options of every verb that works on a fleet."""
    parser.add_argument("-i", "--inventory", default=None, metavar="PATH",
                        help="Ansible inventory, file or directory (default: $ANSIBLE_INVENTORY, else the sandbox "
                             "inventory)")
    parser.add_argument("-l", "--limit", default=None, metavar="PATTERN",
                        help="only these hosts: an Ansible host pattern, as `ansible --limit` reads it")
    parser.add_argument("--format", choices=formats, default="text", help="output format (default: text)")


def inventory_of(options: argparse.Namespace) -> str:
    """The inventory the options name, or the default one."""
    return options.inventory or default_inventory()


class Output:
    """Where a verb writes: plain lines, JSON documents and events; colour and live lines on a terminal only."""

    COLOURS = {"OK": "32", "WARN": "33", "FAIL": "31", "DOWN": "31;1", "SKIPPED": "2"}

    def __init__(self, stream: TextIO | None = None, err: TextIO | None = None):
        self.stream = stream or sys.stdout
        self.err = err or sys.stderr
        self.tty = self.stream.isatty() and os.environ.get("TERM") != "dumb" and "NO_COLOR" not in os.environ

    def line(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    def status(self, status: str, width: int = 0) -> str:
        """A status word, coloured on a terminal, padded to width."""
        padded = f"{status:<{width}}"
        code = self.COLOURS.get(status)
        return f"\033[{code}m{padded}\033[0m" if self.tty and code else padded

    def json(self, data: Any, **kwargs: Any) -> None:
        print(json.dumps(data, indent=2, **kwargs), file=self.stream, flush=True)

    def event(self, data: Any) -> None:
        """One JSON object on one line (json-lines)."""
        print(json.dumps(data, separators=(",", ":")), file=self.stream, flush=True)

    def progress(self, text: str) -> None:
        """A progress note: on stderr, so stdout stays the result."""
        print(text, file=self.err, flush=True)

    def error(self, text: str) -> None:
        print(f"error: {text}", file=self.err, flush=True)
