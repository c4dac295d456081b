"""The in-process transformers engine as a :class:`~hllama.backends.base.Backend`.

It builds each request's prompt from the model's chat template (or its tokens, for completions), runs the
generation on the model's own threads and hands the pieces to the event loop in batches, so the loop stays free
for other requests. With tools offered, the calls are taken out of the streamed text as they come.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from hllama.aliases.resolve import Resolved
from hllama.backends.base import Chat, Completion, Description, Done, Event, Prompted
from hllama.conversation import Message, Turn
from hllama.engine import (
    END,
    Embeddings,
    Generation,
    LoadedModel,
    Prompt,
    Structure,
    ThinkingParts,
    ToolCalls,
    ToolCallStream,
    answer_room,
    build_prompt,
    conversation,
    embed,
    infill_ids,
    structure_of,
    supports_thinking,
    thinking_mode,
    token_ids,
)
from hllama.errors import InvalidOption, NotSupported
from hllama.threads import LoopSink


class Local:
    """A model loaded in this process."""

    parallel = None  # as many at once as the scheduler's num_parallel

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self._running: set[threading.Event] = set()  # the cancel events of generations under way

    @property
    def reserved_bytes(self) -> int:
        return self.loaded.reserved_bytes

    @property
    def precision(self) -> str:
        return self.loaded.precision

    @property
    def generates(self) -> bool:
        return self.loaded.generates

    def context_for(self, requested: int | None) -> int | None:
        return self.loaded.context_for(requested)

    def describe(self) -> Description:
        batcher = self.loaded.batcher
        return Description(plan=self.loaded.plan, resident_bytes=self.loaded.resident_bytes,
                           batch_width=len(batcher.rows) if batcher is not None else None)

    def cancel_all(self) -> None:
        for cancel in list(self._running):
            cancel.set()

    def close(self) -> None:
        self.loaded.close()

    def chat(self, resolved: Resolved, request: Chat) -> AsyncIterator[Event]:
        loaded, tools = self.loaded, request.tools
        schema = request.structure if isinstance(request.structure, dict) else None

        think = request.think
        if request.think_if_able and not supports_thinking(resolved.template or loaded.tokenizer.chat_template):
            think = None

        def prompt_for() -> Prompt:
            messages = conversation(resolved, request.history, json_schema=schema)
            context = loaded.context_for(resolved.parameters.ctx)
            prompt = build_prompt(loaded.tokenizer, messages, template=resolved.template, ctx=context,
                                  reserve=answer_room(resolved.parameters.max_new_tokens, context),
                                  truncate=request.truncate, tools=tools, think=think, model=resolved.name,
                                  processor=loaded.processor)
            return prompt if request.shift else replace(prompt, refit=None)

        def structure_for(prompt: Prompt) -> Structure | None:
            calls = ToolCalls.of(tools, style=prompt.tool_style, choice=request.tool_choice) \
                if prompt.tool_style else None
            return structure_of(resolved.parameters, request.structure, calls)

        events = self._generate(resolved, prompt_for, structure_for, logprobs=request.logprobs)
        return _taking_out_tool_calls(events) if tools else events

    def complete(self, resolved: Resolved, request: Completion) -> AsyncIterator[Event]:
        loaded, text = self.loaded, request.text
        context = loaded.context_for(resolved.parameters.ctx)

        def prompt_for() -> Prompt:
            if request.context is not None:
                ids = self._continuation(resolved, request.context, text, request.structure, context=context)
                return Prompt(ids=ids, text="", messages=[])
            if request.suffix:
                ids = infill_ids(loaded.tokenizer, text, request.suffix, model=resolved.name, context=context)
            else:
                ids = token_ids(loaded.tokenizer, text, context=context)
            return Prompt(ids=ids, text="", messages=[])

        return self._generate(resolved, prompt_for, lambda _: structure_of(resolved.parameters, request.structure),
                              logprobs=request.logprobs)

    def _continuation(self, resolved: Resolved, earlier: list[int], text: str, structure: Structure | None, *,
                      context: int | None) -> list[int]:
        """The tokens of an earlier exchange followed by the new turn (Ollama's ``context``)."""
        vocabulary = self.loaded.model.get_input_embeddings().num_embeddings
        if not all(0 <= token < vocabulary for token in earlier):
            raise InvalidOption(f"context holds token ids outside the model's vocabulary (0 to {vocabulary - 1})")
        turn = conversation(resolved, [Message(role="user", content=text)],
                            json_schema=structure if isinstance(structure, dict) else None)
        return [*earlier, *build_prompt(self.loaded.tokenizer, turn, template=resolved.template, ctx=context).ids]

    async def embed(self, resolved: Resolved, texts: list[str], *, truncate: bool = True,
                    cancel: threading.Event | None = None) -> Embeddings:
        loaded = self.loaded
        work = functools.partial(embed, loaded.model, loaded.tokenizer, texts, pooling=loaded.pooling,
                                 context=loaded.context_for(resolved.parameters.ctx), truncate=truncate, cancel=cancel)
        return await asyncio.get_running_loop().run_in_executor(loaded.executor, work)

    async def count_tokens(self, resolved: Resolved, history: list[Turn], *,
                           tools: list[dict[str, Any]] | None = None) -> int:
        loaded = self.loaded
        prompt = await asyncio.to_thread(build_prompt, loaded.tokenizer, conversation(resolved, history),
                                         template=resolved.template, tools=tools, model=resolved.name,
                                         processor=loaded.processor)
        return len(prompt.ids)

    async def _generate(self, resolved: Resolved, prompt_for: Callable[[], Prompt],
                        structure: Callable[[Prompt], Structure | None], *, logprobs: int | None
                        ) -> AsyncIterator[Event]:
        """``structure``: what the answer to a prompt must follow (enforced token by token), if anything."""
        loaded = self.loaded
        if not loaded.generates:
            raise NotSupported(resolved.name, "generation", "it is an embedding model; use /api/embed")
        prompt = await asyncio.to_thread(prompt_for)
        parts = ThinkingParts(prompt)
        sink = LoopSink(asyncio.get_running_loop())
        generation = await asyncio.to_thread(  # compiling a large schema's grammar may take a while
            functools.partial(Generation, loaded, prompt.ids, resolved.parameters, sink=sink,
                              stops=prompt.extra_stops, logprobs=logprobs, thinking=thinking_mode(prompt),
                              structure=structure(prompt), vision=prompt.vision, refit=_ids_of(prompt.refit)))
        self._running.add(generation.cancel)
        generation.start()
        try:
            yield Prompted(prompt_tokens=len(prompt.ids), dropped_turns=prompt.dropped_turns)
            while True:
                batch = await sink.take()
                # pieces that arrived together leave together: one chunk, one write
                for part in parts.of("".join(item for item in batch if isinstance(item, str))):
                    yield part
                for item in batch:
                    if isinstance(item, BaseException):
                        raise item
                    if item is END:
                        for part in parts.finish():
                            yield part
                        yield Done(finished=generation.finished(), prompt_ids=generation.prompt_ids,
                                   thinking=parts.thinking, logged_messages=prompt.messages)
                        return
        finally:  # a client gone mid-stream lands here too: stop generating, then give the model back
            generation.cancel.set()
            self._running.discard(generation.cancel)
            await asyncio.shield(asyncio.to_thread(generation.join))


async def _taking_out_tool_calls(events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """The answer's content streamed without its tool calls, which come in the :class:`Done`."""
    calls = ToolCallStream()
    try:
        async for item in events:
            if isinstance(item, str):
                if piece := calls.feed(item):
                    yield piece
            elif isinstance(item, Done):
                rest, found = calls.finish()
                if rest:
                    yield rest
                yield replace(item, tool_calls=tuple(found))
            else:
                yield item
    finally:  # closed early by a client that left: give the model back now
        await events.aclose()


def _ids_of(refit: Callable[[int], Prompt | None] | None) -> Callable[[int], list[int] | None] | None:
    """A prompt's ``refit`` as the engine takes it: token ids, not prompts."""
    if refit is None:
        return None
    return lambda room: None if (prompt := refit(room)) is None else prompt.ids
