"""A conversation with a loaded model: the live context, its history file, and one streamed turn at a time."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from hllama.engine import Finished, LoadedModel, build_prompt, conversation, stream
from hllama.engine.thinking import ThinkingParts, Thought
from hllama.errors import InvalidOption
from hllama.fsutil import atomic_write_text
from hllama.modelfile import Message
from hllama.resolve import Resolved

_MESSAGES = TypeAdapter(list[Message])


def load_history(path: Path) -> list[Message]:
    """The conversation saved in ``path`` (none if the file does not exist yet)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise InvalidOption(f"cannot read history file {path}: {exc.strerror or exc}") from None
    try:
        return _MESSAGES.validate_json(text)
    except ValidationError as exc:
        raise InvalidOption(f"{path} is not a conversation (a JSON list of {{role, content}}): "
                            f"{exc.errors()[0]['msg']}") from None


def save_history(path: Path, messages: list[Message]) -> None:
    data = [message.model_dump() for message in messages]
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


class ChatSession:
    """The context sent with each turn. ``resolved`` may be replaced between turns (``/set``)."""

    def __init__(self, loaded: LoadedModel, resolved: Resolved, *, history: list[Message] | None = None,
                 history_file: Path | None = None, think: bool | str | None = None) -> None:
        self.loaded = loaded
        self.resolved = resolved
        self.think = think  # for thinking models: None is the model's own default
        self.history_file = history_file
        self.log = list(history or [])  # every turn, kept in history_file
        self.messages = list(self.log)  # what the model sees; /clear empties it

    def ask(self, text: str, *, cancel: threading.Event | None = None) -> Iterator[str | Thought | Finished]:
        """Stream one answer (a thinking model's thinking as :class:`Thought` pieces). An interrupted answer
        stays in the context as far as it got; thinking is not kept."""
        question = Message(role="user", content=text)
        prompt = build_prompt(self.loaded.tokenizer, conversation(self.resolved, [*self.messages, question]),
                              template=self.resolved.template,
                              ctx=self.loaded.context_for(self.resolved.parameters.ctx), think=self.think,
                              model=self.resolved.name)
        self.messages.append(question)
        parts = ThinkingParts(prompt)
        pieces: list[str] = []
        try:
            for item in stream(self.loaded, prompt.ids, self.resolved.parameters, stops=prompt.extra_stops,
                               cancel=cancel):
                for part in parts.finish() if isinstance(item, Finished) else parts.of(item):
                    if isinstance(part, str):
                        pieces.append(part)
                    yield part
                if isinstance(item, Finished):
                    yield item
        finally:
            reply = Message(role="assistant", content="".join(pieces))
            self.messages.append(reply)
            self.log += [question, reply]
            if self.history_file:
                save_history(self.history_file, self.log)

    def clear(self) -> None:
        self.messages = []
