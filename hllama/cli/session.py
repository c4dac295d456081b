"""A conversation in the terminal: the live context, its history file, and one streamed turn at a time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from hllama.aliases.resolve import Resolved
from hllama.backends import Prompted
from hllama.conversation import ChatMessage, Message, Thought
from hllama.errors import InvalidOption
from hllama.fsutil import atomic_write_text
from hllama.runtime.scheduler import load_key
from hllama.runtime.service import Result, Service

_MESSAGES = TypeAdapter(list[Message])
T = TypeVar("T")


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
    data = [Message(role=message.role, content=message.content).model_dump() for message in messages]  # no images
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


class ChatSession:
    """The context sent with each turn, answered through the same :class:`Service` the server uses.

    ``resolved`` may be replaced between turns (``/set``, an edited modelfile). The model stays loaded for
    the whole session (its keep_alive is forever here) and is unloaded by :meth:`close`.
    """

    def __init__(self, service: Service, resolved: Resolved, *, history: list[Message] | None = None,
                 history_file: Path | None = None, think: bool | str | None = None) -> None:
        self.service = service
        self.resolved = resolved
        self.think = think  # for thinking models: None is the model's own default
        self.history_file = history_file
        self.log = list(history or [])  # every turn, kept in history_file
        self.messages = list(self.log)  # what the model sees; /clear empties it
        self._loop = asyncio.new_event_loop()  # the session's own: each call below runs it until done
        self._load_ns = 0  # what loading took before the first answer, which that answer reports

    def load(self) -> None:
        """Load the model now (a chat shows its prompt once the model is ready, and fails before it if not)."""
        started = time.perf_counter_ns()
        self._run(self.service.scheduler.load(self._held(self.resolved)))
        self._load_ns += time.perf_counter_ns() - started

    def loading_status(self) -> str:
        """What the loader last said of the model it is loading (converting, dequantizing), if anything."""
        return next((loading.status for loading in self.service.scheduler.loading), "")

    def switch(self, resolved: Resolved) -> None:
        """Use ``resolved`` from the next turn; a model it no longer uses is unloaded."""
        before, self.resolved = load_key(self.resolved), resolved
        if load_key(resolved) != before:
            self._run(self.service.scheduler.retire(before))

    def ask(self, text: str, *, images: list[bytes] | None = None) -> Iterator[str | Thought | Result]:
        """Stream one answer (a thinking model's thinking as :class:`Thought` pieces), then its :class:`Result`.
        An interrupted answer (closing the iterator, Ctrl+C) stays in the context as far as it got; thinking is
        not kept. ``images`` (checked files) go with the question, for a vision model."""
        question = ChatMessage(role="user", content=text, images=images) if images else Message(role="user",
                                                                                                 content=text)
        events = self.service.chat(self._held(self.resolved), [*self.messages, question], think=self.think)
        self.messages.append(question)
        pieces: list[str] = []
        try:
            while True:
                try:
                    item = self._run(anext(events))
                except StopAsyncIteration:
                    return
                if isinstance(item, Prompted):  # how the prompt was built: the answer follows
                    continue
                if isinstance(item, str):
                    pieces.append(item)
                elif isinstance(item, Result) and self._load_ns:  # the load this session did before it asked
                    item, self._load_ns = replace(item, load_ns=item.load_ns + self._load_ns), 0
                yield item
        finally:
            self._run(events.aclose())  # the generation stops and the model is free again
            reply = Message(role="assistant", content="".join(pieces))
            self.messages.append(reply)
            self.log += [question, reply]
            if self.history_file:
                save_history(self.history_file, self.log)

    def clear(self) -> None:
        self.messages = []

    def close(self) -> None:
        try:
            self._run(self.service.scheduler.close())
        finally:
            self._loop.close()
            self.service.close_log()

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the session's loop; Ctrl+C meanwhile cancels it (letting it clean up), then goes on."""
        task = self._loop.create_task(work)
        try:
            return self._loop.run_until_complete(task)
        except KeyboardInterrupt:
            task.cancel()
            with contextlib.suppress(BaseException):
                self._loop.run_until_complete(task)
            raise

    @staticmethod
    def _held(resolved: Resolved) -> Resolved:
        """The session keeps its model loaded between turns, however long a person takes to type."""
        parameters = resolved.parameters.model_copy(update={"keep_alive": -1})
        return resolved.model_copy(update={"parameters": parameters})
