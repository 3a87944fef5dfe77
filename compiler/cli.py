"""The ``edgecnn`` command.

Each sub-command is one module in ``edgecnn.compiler.commands`` exposing ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; adding a command is adding a file.
User mistakes become one line on stderr and exit code 2 (1 for a verification mismatch),
never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from edgecnn.runtime.bundle import unpin_thread_pool
from edgecnn.runtime.errors import EdgeCNNError
from edgecnn.runtime.host import edgecnn_version

from . import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgecnn",
        description="Compile convolutional networks from definition to verified code on edge hardware.",
    )
    parser.add_argument("--version", action="version", version=f"edgecnn {edgecnn_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        name = getattr(module, "NAME", info.name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def one_line(message: str) -> str:
    """``message`` with every character that is not printable (newlines, control characters a
    corrupted file's names may hold) escaped, so an error stays one line."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # before any command starts TVM's thread pool (compiling can run kernels, e.g. constant folding)
    unpin_thread_pool()
    try:
        return int(args._run(args) or 0)
    except EdgeCNNError as exc:
        print(f"edgecnn {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"edgecnn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
