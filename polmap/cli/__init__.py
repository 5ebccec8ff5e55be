"""``polmap`` command line: headless access to the same core as the dashboard."""

from __future__ import annotations

import argparse
import importlib
import sys

from polmap import __version__
from polmap.io.dataset import DatasetError

# Each module has ``register(subparsers)`` that adds its sub-command(s) with ``func`` set.
COMMAND_MODULES: list[str] = [
    "polmap.cli.info",
    "polmap.cli.simulate",
    "polmap.cli.learn",
]


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="polmap",
        description="Map ferroelectric polarization domains from 4D-STEM data.",
    )
    parser.add_argument("--version", action="version", version=f"polmap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (DatasetError, ValueError, FileNotFoundError) as exc:
        # Bad input is the user's to fix: one clear line, no traceback.
        print(f"polmap {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
