"""The ``hllama`` command line: parse, call one core function, print.

Errors are mapped to one line on stderr here, once, by class. Commands that do not run a model
never import torch or transformers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from hllama import __version__
from hllama.errors import AliasExists, AliasNotFound, ConfigError, HllamaError, InvalidAliasName, ModelTooLarge

#: What to do next, by error class (the first match in the class's MRO wins).
NEXT_STEPS: dict[type[HllamaError], str] = {
    AliasNotFound: "run 'hllama list' to see the aliases",
    AliasExists: "add --force to replace it",
    InvalidAliasName: "pick another name",
    ConfigError: "fix or remove that setting",
    ModelTooLarge: "add --force to load it anyway",
}


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"Error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from hllama.cli import aliases, chat, logs, models, server

    parser = _Parser(prog="hllama", description="Run Hugging Face models the way Ollama runs GGUF.")
    parser.add_argument("-v", "--version", action="version", version=f"hllama {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    aliases.register(commands)
    models.register(commands)
    chat.register(commands)
    server.register(commands)
    server.register_client(commands)
    logs.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except HllamaError as exc:
        return _fail(str(exc), _next_step(exc))
    except BrokenPipeError:  # `hllama list | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        return 141
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}")
    except KeyboardInterrupt:
        return 130


def _next_step(exc: HllamaError) -> str | None:
    return next((NEXT_STEPS[cls] for cls in type(exc).__mro__ if cls in NEXT_STEPS), None)


def _fail(message: str, next_step: str | None = None) -> int:
    print(f"Error: {message}" + (f"; {next_step}" if next_step else ""), file=sys.stderr)
    return 1
