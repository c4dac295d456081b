"""``chat`` and ``run``: talk to a model in the terminal, or ask once and print the answer."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from hllama.aliases.resolve import Resolved, resolve
from hllama.aliases.store import AliasStore
from hllama.cli.args import add_generation_options, add_load_options, overrides_from_args
from hllama.cli.spinner import spinner
from hllama.cli.status import INTERRUPTED
from hllama.cli.table import format_table
from hllama.config import Settings, load_settings
from hllama.errors import HllamaError, InvalidOption, ModelNotDownloaded, NotSupported
from hllama.names import is_local_path
from hllama.options import SYNONYMS, Parameters
from hllama.validation import describe, did_you_mean

HELP = """Commands:
  /set parameter NAME VALUE   set a generation parameter (stop takes several values)
  /set system TEXT            set the system prompt
  /set think [LEVEL]          thinking models: think first (LEVEL: low, medium, high, max)
  /set nothink                thinking models: answer at once
  /show parameters            show the effective parameters and where each comes from
  /show system                show the system prompt
  /clear                      forget the conversation so far
  /save FILE                  save the conversation (load it again with --history FILE)
  /bye                        leave (Ctrl+D too)
  /?, /help                   this help
Use \"\"\" to begin and end a message of several lines. Ctrl+C stops an answer."""


def register(commands: argparse._SubParsersAction) -> None:
    for name, summary in (("chat", "chat with a model"), ("run", "ask a model once, or chat (Ollama's habit)")):
        parser = commands.add_parser(name, help=summary, description=f"{summary.capitalize()}. With a prompt "
                                     "(or text piped on stdin) it answers once and exits; otherwise it chats.")
        parser.add_argument("model", help="alias, Hub repo id, local model folder or .gguf file")
        parser.add_argument("prompt", nargs="*", default=[], help="ask this and exit")
        parser.add_argument("--history", metavar="FILE", type=Path,
                            help="load the conversation from FILE if it exists, and append every turn to it")
        parser.add_argument("--input-file", metavar="FILE", type=Path, help="its text is the first user message")
        parser.add_argument("--image", metavar="FILE", type=Path, action="append", default=[],
                            help="attach an image to the first message (vision models; repeatable); image files "
                                 "named in a prompt (./photo.png) are attached too")
        parser.add_argument("--force", action="store_true", help="load even when it looks too large for memory")
        parser.add_argument("-y", "--yes", action="store_true", help="pull without asking, even if it cannot fit")
        parser.add_argument("--verbose", action="store_true", help="print timings after each answer")
        parser.add_argument("--think", nargs="?", const=True, type=_think, metavar="LEVEL",
                            help="thinking models: think first, or not (true, false, low, medium, high, max; "
                                 "default: the model's own habit)")
        parser.add_argument("--hidethinking", action="store_true", help="thinking models: show only the answer")
        add_generation_options(parser)
        add_load_options(parser)
        parser.set_defaults(run=run_chat)


def _think(text: str) -> bool | str:
    from hllama.conversation import THINK_LEVELS

    value = text.lower()
    if value in ("true", "false"):
        return value == "true"
    if value not in THINK_LEVELS:
        raise argparse.ArgumentTypeError(f"invalid think value {text!r}: use true, false, {', '.join(THINK_LEVELS)}")
    return value


class _Conversation:
    """The CLI side of a chat: flags as the CLI layer, re-resolved when ``/set`` changes them."""

    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        self.name = args.model
        self.settings = settings
        self.registry = AliasStore(settings).refresh()
        self.overrides = overrides_from_args(args)

    def resolve(self) -> Resolved:
        return resolve(self.name, settings=self.settings, registry=self.registry, cli=self.overrides)

    def follow_edits(self, session) -> str | None:
        """Pick up an edit of the alias's modelfile between turns; a line saying what happened, if anything."""
        before = self.registry.get(self.name)
        if before is None:
            return None
        self.registry = AliasStore(self.settings).refresh()
        after = self.registry.get(self.name)
        if after is None:
            return f"(the modelfile of '{self.name}' was removed; keeping the settings in use)"
        if after.error is not None and (before.error is None or str(before.error) != str(after.error)):
            return f"(modelfile changed but is invalid, keeping its last good version: {after.error})"
        if after.digest == before.digest and after.path == before.path:
            return None
        session.switch(self.resolve())  # its model loads at the next turn if the edit changed how
        return f"(modelfile {after.path.name} changed: now using its new settings)"


def run_chat(args: argparse.Namespace) -> int:
    settings = load_settings()
    talk = _Conversation(args, settings)
    interactive = not args.prompt and sys.stdin.isatty()
    first = _first_message(args)
    if first is None and not interactive:
        first = _trimmed(sys.stdin.read())
        if not first:
            raise InvalidOption("nothing to ask: give a prompt, or pipe one on stdin")
    from hllama.cli.session import load_history

    history = load_history(args.history) if args.history else []  # a bad file fails before any download
    session = _open_session(talk.resolve(), settings, args, history)
    try:
        show = _Shown(verbose=args.verbose, thinking=not args.hidethinking)
        if first is not None:
            finished = _answer(session, first, show, images=[_read_image(path) for path in args.image])
            if not finished and not interactive:
                return INTERRUPTED  # stopped by Ctrl+C, as a shell expects of an interrupted command
        return _repl(session, talk, show) if interactive else 0
    finally:
        session.close()


#: More text than any model's context holds.
MAX_INPUT_BYTES = 64 * 2**20


def _trimmed(text: str) -> str:
    """``text`` as given, without the blank lines (and spaces) before and after it: a diff's or a code block's
    indentation and line breaks are part of what is asked."""
    lines = text.rstrip().split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    return "\n".join(lines)


def _first_message(args: argparse.Namespace) -> str | None:
    prompt = _trimmed(" ".join(args.prompt)) or None
    if args.input_file is None:
        return prompt
    try:
        with args.input_file.open("rb") as handle:  # a pipe (<(command)) works too
            data = handle.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise InvalidOption(f"cannot read {args.input_file}: {exc.strerror or exc}") from None
    if len(data) > MAX_INPUT_BYTES:
        raise InvalidOption(f"{args.input_file} is larger than {MAX_INPUT_BYTES // 2**20} MiB")
    try:
        text = _trimmed(data.decode("utf-8-sig"))  # as text piped on stdin is
    except UnicodeDecodeError:
        raise InvalidOption(f"{args.input_file} is not UTF-8 text") from None
    return f"{prompt}\n\n{text}" if prompt else text


def _open_session(resolved: Resolved, settings: Settings, args: argparse.Namespace, history: list):
    from hllama.cli.session import ChatSession
    from hllama.models.source import locate
    from hllama.runtime.service import build_service

    try:
        locate(resolved.model, resolved.revision)
    except ModelNotDownloaded:  # like `ollama run`: pull on first use
        from hllama.cli.models import pull_model

        if not pull_model(resolved.model, revision=resolved.revision, settings=settings, yes=args.yes,
                          load=resolved.load, context=resolved.parameters.ctx):
            raise ModelNotDownloaded(resolved.model) from None
    service = build_service(settings.model_copy(update={"num_parallel": 1}), force=args.force)
    session = ChatSession(service, resolved, history=history, history_file=args.history, think=args.think)
    try:
        with spinner(f"loading {Path(resolved.name).name if is_local_path(resolved.name) else resolved.name}",
                     session.loading_status):
            session.load()
        if not service.scheduler.runners[0].backend.generates:
            raise NotSupported(resolved.name, "chat", "it is an embedding model; serve it and use /api/embed")
    except BaseException:
        session.close()
        raise
    return session


@dataclass(frozen=True)
class _Shown:
    verbose: bool  # timings after each answer
    thinking: bool  # a thinking model's thinking, before its answer


#: An image file named in a prompt, as ``ollama run`` finds them: a path ending in an image extension.
_IMAGE_PATH = re.compile(r"(?:~|\.{1,2})?/?[^\s'\"]*\.(?:png|jpe?g|webp|gif|bmp)\b", re.IGNORECASE)


def _read_image(path: Path) -> bytes:
    """An image file, checked as a request's images are."""
    from hllama.images import MAX_IMAGE_BYTES, checked

    try:
        with path.expanduser().open("rb") as handle:
            data = handle.read(MAX_IMAGE_BYTES + 1)
    except OSError as exc:
        raise InvalidOption(f"cannot read {path}: {exc.strerror or exc}") from None
    checked(data, where=str(path))
    return data


def _attached(text: str) -> tuple[str, list[bytes]]:
    """The prompt without the image files it names, and those images (a path that is no file stays text).
    Nothing else of the text changes: its line breaks and indentation reach the model as typed."""
    images = []
    for match in _IMAGE_PATH.findall(text):
        path = Path(match).expanduser()
        if path.is_file():
            images.append(_read_image(path))
            text = text.replace(match, "", 1)
    return (text.strip() if images else text), images  # as `ollama run` trims around the paths it took out


def _answer(session, text: str, show: _Shown, *, images: list[bytes] | None = None) -> bool:
    """Stream one answer to stdout (thinking first, set apart as Ollama does); Ctrl+C stops it. Whether it ended
    by itself (False: Ctrl+C stopped it)."""
    from hllama.conversation import Thought
    from hllama.runtime.service import Result

    result = None
    thinking = False
    text, named = _attached(text)
    answer = session.ask(text, images=[*(images or []), *named])
    try:
        for item in answer:
            if isinstance(item, Result):
                result = item
                continue
            if isinstance(item, Thought):
                if not show.thinking:
                    continue
                if not thinking:
                    sys.stdout.write("Thinking...\n")
                    thinking = True
                sys.stdout.write(item.text)
            else:
                if thinking:
                    sys.stdout.write("\n...done thinking.\n\n")
                    thinking = False
                sys.stdout.write(item)
            sys.stdout.flush()
    except KeyboardInterrupt:
        answer.close()  # the generation stops; what was said so far stays in the conversation
        print()
        return False
    print()
    if show.verbose and result is not None:
        _print_stats(result)
    return True


def _print_stats(result) -> None:
    """``ollama run --verbose``'s lines: the prompt's count is all of it, the part read from the cache apart, and
    the prompt's rate is of the tokens actually read."""
    stats = result.finished.stats

    def rate(tokens: int, nanoseconds: int) -> str:
        return f"{tokens / (nanoseconds / 1e9):.2f} tokens/s" if nanoseconds else "-"

    cached = f"prompt eval cached:   {stats.cached_tokens} token(s)\n" if stats.cached_tokens else ""
    print(f"total duration:       {result.total_ns / 1e9:.3f}s\n"
          f"load duration:        {result.load_ns / 1e9:.3f}s\n"
          f"prompt eval count:    {stats.prompt_tokens} token(s)\n{cached}"
          f"prompt eval duration: {stats.prompt_eval_ns / 1e9:.3f}s\n"
          f"prompt eval rate:     {rate(stats.evaluated_tokens, stats.prompt_eval_ns)}\n"
          f"eval count:           {stats.generated_tokens} token(s)\n"
          f"eval duration:        {stats.eval_ns / 1e9:.3f}s\n"
          f"eval rate:            {rate(stats.generated_tokens, stats.eval_ns)}\n"
          f"done reason:          {stats.done_reason}", file=sys.stderr)


def _repl(session, talk: _Conversation, show: _Shown) -> int:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    while True:
        try:
            text = _read_message()
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print("\nUse Ctrl + d or /bye to exit.")
            continue
        if text is None or not text.strip():
            continue
        if text.startswith("/"):
            try:
                if _command(text, session, talk) == "bye":
                    return 0
            except HllamaError as exc:
                print(f"Error: {exc}")
            continue
        try:
            if note := talk.follow_edits(session):
                print(note)
            _answer(session, text, show)
        except HllamaError as exc:
            print(f"Error: {exc}")
        print()


def _read_message() -> str | None:
    line = input(">>> ")
    if not line.lstrip().startswith('"""'):
        return line
    body = line.lstrip()[3:]
    lines = []
    while True:
        if body.rstrip().endswith('"""'):
            lines.append(body.rstrip()[:-3])
            return "\n".join(lines).strip("\n")
        lines.append(body)
        body = input("... ")


def _command(text: str, session, talk: _Conversation) -> str | None:
    """Run one of the REPL's commands (see :data:`_HANDLERS`); "bye" ends the conversation."""
    words = text.split()
    command = words[0].lower()
    if command in ("/bye", "/exit"):
        return "bye"
    subcommand = words[1] if len(words) > 1 else None
    for key in ((command, subcommand), (command, None)):
        if key in _HANDLERS and (handler := _HANDLERS[key])[0] <= len(words) <= handler[1]:
            handler[2](words, text, session, talk)
            return None
    print(f"Unknown command '{text.strip()}'{did_you_mean(command, COMMANDS)}. Type /? for help")
    return None


def _help(words: list[str], text: str, session, talk: _Conversation) -> None:
    print(HELP)


def _clear(words: list[str], text: str, session, talk: _Conversation) -> None:
    session.clear()
    print("Cleared session context")


def _save(words: list[str], text: str, session, talk: _Conversation) -> None:
    from hllama.cli.session import save_history

    save_history(Path(words[1]), session.messages)
    print(f"Saved the conversation to {words[1]}")


def _set_system(words: list[str], text: str, session, talk: _Conversation) -> None:
    talk.overrides = talk.overrides.model_copy(update={"system": text.split(None, 2)[2]})
    session.resolved = talk.resolve()
    print("Set system message.")


def _set_think(words: list[str], text: str, session, talk: _Conversation) -> None:
    try:
        session.think = _think(words[2]) if len(words) == 3 else True
    except argparse.ArgumentTypeError as exc:
        raise InvalidOption(str(exc)) from None
    print("Set 'think' mode.")


def _set_nothink(words: list[str], text: str, session, talk: _Conversation) -> None:
    session.think = False
    print("Set 'nothink' mode.")


def _set_a_parameter(words: list[str], text: str, session, talk: _Conversation) -> None:
    _set_parameter(talk, words[2], words[3:])
    session.resolved = talk.resolve()
    print(f"Set parameter '{words[2]}' to '{' '.join(words[3:])}'")


def _show_parameters(words: list[str], text: str, session, talk: _Conversation) -> None:
    rows = [(key.removeprefix("parameters."), "-" if value is None else str(value), layer.value if layer else "unset")
            for key, value, layer in session.resolved.explain() if key.startswith("parameters.")]
    print(format_table(("PARAMETER", "VALUE", "FROM"), rows))


def _show_system(words: list[str], text: str, session, talk: _Conversation) -> None:
    print(session.resolved.system or "(no system prompt)")


_ANY = 10**9  # words: as many as typed

#: The REPL's commands: (command, its first word or None for any) -> (fewest words, most words, handler).
_HANDLERS: dict[tuple[str, str | None], tuple[int, int, Callable[..., None]]] = {
    ("/?", None): (1, _ANY, _help), ("/help", None): (1, _ANY, _help), ("/clear", None): (1, _ANY, _clear),
    ("/save", None): (2, 2, _save), ("/set", "system"): (3, _ANY, _set_system), ("/set", "think"): (2, 3, _set_think),
    ("/set", "nothink"): (2, 2, _set_nothink), ("/set", "parameter"): (4, _ANY, _set_a_parameter),
    ("/show", "parameters"): (2, 2, _show_parameters), ("/show", "system"): (2, 2, _show_system),
}


#: The REPL's commands, as typed.
COMMANDS = ("/set", "/show", "/clear", "/save", "/bye", "/exit", "/help", "/?")


def _set_parameter(talk: _Conversation, name: str, values: list[str]) -> None:
    current = talk.overrides.parameters.model_dump(exclude_none=True)
    current.pop(SYNONYMS.get(name, name), None)
    try:
        updated = Parameters.model_validate({**current, name: values if name == "stop" else " ".join(values)})
    except ValidationError as exc:
        error = exc.errors()[0]
        raise InvalidOption(f"parameter '{name}': {describe(error, schema=Parameters)}") from None
    talk.overrides = talk.overrides.model_copy(update={"parameters": updated})
