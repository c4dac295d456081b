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
from hllama.cli.status import INTERRUPTED
from hllama.errors import (
    AddressInUse,
    AliasExists,
    AliasNotFound,
    BuiltinAlias,
    CannotListen,
    ConfigError,
    HllamaError,
    InvalidAliasName,
    ModelTooLarge,
)
from hllama.validation import did_you_mean

#: What to do next, by error class (the first match in the class's MRO wins).
NEXT_STEPS: dict[type[HllamaError], str] = {
    AliasNotFound: "run 'hllama list' to see the aliases",
    AliasExists: "add --force to replace it",
    BuiltinAlias: "a modelfile of that name replaces it; 'hllama cache --clear' deletes the copy converted for it",
    InvalidAliasName: "pick another name",
    ConfigError: "fix or remove that setting",
    ModelTooLarge: "add --force to load it anyway",
    AddressInUse: "'hllama ps' shows what an hllama there runs; serve elsewhere with --port N (or OLLAMA_HOST)",
    CannotListen: "pick another address with --host or --port (or OLLAMA_HOST)",
}


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"Error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from hllama.cli import aliases, chat, launch, logs, models, server

    parser = _Parser(prog="hllama", description="Run Hugging Face models the way Ollama runs GGUF.")
    parser.add_argument("-v", "--version", action="version", version=f"hllama {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    aliases.register(commands)
    models.register(commands)
    chat.register(commands)
    server.register(commands)
    server.register_client(commands)
    logs.register(commands)
    launch.register(commands)
    for command in commands.choices.values():
        command.set_defaults(command_parser=command)  # whose flags (and help) an unknown flag is told of
    parser.set_defaults(commands=commands.choices)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The arguments, or one line naming what was not understood, the closest known spelling, and whose help to
    read: the command's own, for a flag it does not have."""
    words = sys.argv[1:] if argv is None else argv
    commands = parser.get_default("commands")
    passes_on = bool(words) and words[0] in commands and commands[words[0]].get_default("passed") is not None
    words, passed = (words[:words.index("--")], words[words.index("--") + 1:]) if passes_on and "--" in words \
        else (words, [])  # a command that runs another (launch) hands it the words after --
    if words and not words[0].startswith("-") and words[0] not in commands:
        parser.error(f"unknown command '{words[0]}'{did_you_mean(words[0], commands)}")
    args, unknown = parser.parse_known_args(words)
    if unknown:
        command = getattr(args, "command_parser", parser)
        flags = [flag for action in command._actions for flag in action.option_strings]
        flag = next((word for word in unknown if word.startswith("-")), unknown[0])
        command.error(f"unrecognized argument {flag.split('=', 1)[0]}{did_you_mean(flag.split('=', 1)[0], flags)}"
                      if flag.startswith("-") else f"unexpected argument '{flag}'")
    if passes_on:
        args.passed = passed
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    parser = build_parser()
    args = _parse(parser, argv)
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
        print(file=sys.stderr)  # the line ^C was echoed on ends
        return INTERRUPTED


def entry() -> None:
    """The ``hllama`` command: :func:`main`, then exit. After Ctrl+C it exits at once: a model still loading (or an
    answer's last token) runs in a worker thread the interpreter would otherwise wait for, for as long as it takes."""
    code = main()
    if code == INTERRUPTED:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)



def _next_step(exc: HllamaError) -> str | None:
    return next((NEXT_STEPS[cls] for cls in type(exc).__mro__ if cls in NEXT_STEPS), None)


def _fail(message: str, next_step: str | None = None) -> int:
    print(f"Error: {message}" + (f"; {next_step}" if next_step else ""), file=sys.stderr)
    return 1
