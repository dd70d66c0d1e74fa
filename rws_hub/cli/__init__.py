"""The ``rws`` command line. Each module in this package adds its own verbs.

A verb module defines ``register(subparsers)`` that adds one or more sub-commands and sets
``func`` (called with the parsed namespace; its return value is the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rws",
        description="Robust Weight Signatures: extract, quantize, inspect, compose and patch "
        "corruption-robustness patches; train, evaluate and serve models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the CLI reports errors in one line, not a traceback
        from rws_hub.errors import RWSError

        if isinstance(exc, (RWSError, FileNotFoundError, ValueError)):
            print(f"rws {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
