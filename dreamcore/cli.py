"""``python -m dreamcore <command>``: one entry point, one module per command.

Each command module exposes ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``, and
imports nothing heavy at module level, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = {
    "train": "dreamcore.commands.train",
    "generate": "dreamcore.commands.generate",
    "grid": "dreamcore.commands.grid",
    "tiny-model": "dreamcore.commands.tiny_model",
    "demo": "dreamcore.commands.demo",
    "convert": "dreamcore.convert.command",
    "prepare": "dreamcore.prepare.command",
    "score": "dreamcore.likeness.command",
    "merge-lora": "dreamcore.lora.command",
    "bench": "dreamcore.bench.command",
    "jobs": "dreamcore.jobs.command",
    "ui": "dreamcore.jobs.ui_command",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreamcore", description="DreamBooth for your own face, offline.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and module_name.startswith(error.name):
                continue  # that command is not part of this build yet
            raise
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for commands that relaunch themselves
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
