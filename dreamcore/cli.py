"""``python -m dreamcore <command>``: one entry point, one module per command.

Each command module exposes ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``, and
imports nothing heavy at module level, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import sys
from typing import NoReturn

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


class CommandParser(argparse.ArgumentParser):
    """A parser whose errors are one line and a pointer to --help, not the whole usage (train has 100 flags)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `python -m {self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="dreamcore", description="DreamBooth for your own face, offline.")
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


def unknown_arguments_message(parser: argparse.ArgumentParser, command: str | None, unknown: list[str]) -> str:
    """One line naming each flag the command does not know, with the nearest flag it does know."""
    sub = _subparser(parser, command) or parser
    # argparse keeps a parser's flags in its actions; each action lists its spellings
    known = [flag for action in sub._actions for flag in action.option_strings]
    flags = [arg.split("=", 1)[0] for arg in unknown if arg.startswith("-")]
    if not flags:
        return f"{sub.prog}: error: unexpected argument(s): {' '.join(unknown)} (see `python -m {sub.prog} --help`)"
    parts = []
    for flag in dict.fromkeys(flags):
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
        parts.append(f"{flag}" + (f" (did you mean {close[0]}?)" if close else ""))
    return (f"{sub.prog}: error: unknown flag{'s' if len(parts) > 1 else ''} {', '.join(parts)} "
            f"(see `python -m {sub.prog} --help`)")


def _subparser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(command) if command else None
    return None


def main(argv: list[str] | None = None) -> int:
    from dreamcore.console import quiet_console

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_console()
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(unknown_arguments_message(parser, getattr(args, "command", None), unknown), file=sys.stderr)
        return 2
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for commands that relaunch themselves
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
