"""What every front end shares: resolving a request's model and settings, and streaming its answer.

The server's routes translate their wire format into a :class:`Resolved` plus a conversation (or text to
continue) and iterate :meth:`Service.chat` / :meth:`Service.complete`; ``hllama chat`` and ``run`` go through the
same :meth:`Service.chat`, so a model is loaded, scheduled and prompted one way. The service resolves, keeps the
registry fresh and retires what an edit replaced; the answer itself comes from the alias's
:class:`~hllama.backends.Backend`, held from the scheduler for the length of the request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from hllama.aliases.registry import Registry, changes
from hllama.aliases.resolve import Overrides, Resolved, resolve
from hllama.aliases.store import AliasStore
from hllama.backends import Backend, Backends, Chat, Completion, Done, Event, Prompted
from hllama.backends.upstream import Upstream
from hllama.config import Settings
from hllama.conversation import Thought, ToolCall, Turn
from hllama.engine import Embeddings, Finished, Structure
from hllama.errors import AliasNotFound, HllamaError, InvalidOption
from hllama.models.hardware import Budget, memory_budget
from hllama.runtime.metrics import Metrics
from hllama.runtime.requestlog import Entry as LogEntry
from hllama.runtime.requestlog import RequestLog, current_client
from hllama.runtime.responses import ResponseStore
from hllama.runtime.scheduler import Scheduler, load_key

log = logging.getLogger("hllama.server")


@dataclass(frozen=True)
class Result:
    """The end of one answer: the backend's account of it, plus what only the service measures."""

    finished: Finished
    prompt_ids: list[int]
    load_ns: int
    total_ns: int
    tool_calls: tuple[ToolCall, ...] = ()  # found in the answer when the request offered tools
    thinking: str = ""  # what a thinking model thought before it answered, when that was wanted


@dataclass(frozen=True)
class EmbedResult:
    embeddings: Embeddings
    load_ns: int
    total_ns: int


def build_service(settings: Settings, *, budget: Budget | None = None, force: bool = False) -> Service:
    """The real thing: every kind of backend behind the scheduler, the budget detected once at start. ``force``
    loads even what looks too large for memory (``hllama chat --force``)."""
    budget = budget or memory_budget(settings)
    backends = Backends(settings, budget, force=force)
    scheduler: Scheduler[Backend] = Scheduler(
        load=backends.load, size=backends.size, budget=budget.bytes, max_loaded=settings.max_loaded_models,
        max_queue=settings.max_queue, parallel=settings.num_parallel)
    return Service(settings=settings, store=AliasStore(settings), scheduler=scheduler, budget=budget)


class Service:
    def __init__(self, *, settings: Settings, store: AliasStore, scheduler: Scheduler[Backend],
                 budget: Budget) -> None:
        self.settings = settings
        self.store = store
        self.scheduler = scheduler
        self.budget = budget
        self.registry: Registry = store.refresh()
        self._replaced: set[tuple] = set()
        self.metrics = Metrics()
        self.metrics.watch(scheduler)
        scheduler.observer = self.metrics
        self.responses = ResponseStore(settings.home / "responses.db")  # the Responses API's, when stored
        self.request_log = RequestLog(settings.home / "logs.db", retention=settings.log_retention,
                                      dropped=self.metrics.log_dropped.inc) if settings.log_requests else None

    def close_log(self) -> None:
        """Write what the request log still holds (at shutdown)."""
        if self.request_log is not None:
            self.request_log.close()

    def cancel_all(self) -> None:
        """Stop every generation under way (within a token, or a layer of the pass reading its prompt): the server is
        going away. Safe to call from a signal handler."""
        for runner in list(self.scheduler.runners):
            runner.backend.cancel_all()

    def refresh(self) -> Registry:
        """Recompile the modelfiles and swap the registry; note models whose alias now loads differently."""
        old, new = self.registry, self.store.refresh()
        self.registry = new
        diff = changes(old, new)
        for verb, names in (("added", diff.added), ("removed", diff.removed), ("changed", diff.changed)):
            for name in names:
                log.info("alias '%s' %s", name, verb)
        for error in diff.new_problems:
            log.warning("%s", error)
        self.metrics.reload_errors.inc(len(diff.new_problems))
        if diff.added or diff.removed or diff.changed:
            self.metrics.reloads.inc()
            log.info("modelfiles reloaded: %d added, %d removed, %d changed, %d aliases", len(diff.added),
                     len(diff.removed), len(diff.changed), len(new.entries))
        still_used = {self._key(name, new) for name in new.entries}
        self._replaced |= {key for name in diff.changed
                           if (key := self._key(name, old)) is not None and key not in still_used}
        return new

    async def retire_replaced(self) -> None:
        """Unload models an edit replaced, once their running requests finish (a deleted alias's model simply
        expires at its keep_alive)."""
        replaced, self._replaced = self._replaced, set()
        for key in replaced:
            await self.scheduler.retire(key)

    def _key(self, name: str, registry: Registry) -> tuple | None:
        try:
            return load_key(resolve(name, settings=self.settings, registry=registry))
        except HllamaError:
            return None

    def resolve(self, name: str, api: Overrides | None = None) -> Resolved:
        """Resolve ``name``; an unknown one is looked for again after compiling the folder (a new modelfile)."""
        try:
            return resolve(name, settings=self.settings, registry=self.registry, api=api)
        except AliasNotFound:
            return resolve(name, settings=self.settings, registry=self.refresh(), api=api)

    def chat(self, resolved: Resolved, history: list[Turn], *, structure: Structure | None = None,
             tools: list[dict[str, Any]] | None = None, tool_choice: str = "auto", think: bool | str | None = None,
             think_if_able: bool = False, logprobs: int | None = None, truncate: bool = True, shift: bool = True
             ) -> AsyncIterator[str | Thought | Prompted | Result]:
        """Pieces of the answer, then a :class:`Result`. Close it (``aclose``) to stop early and free the model.

        A thinking model's thinking comes as :class:`Thought` pieces (``think=False`` drops it). With
        ``tools``, the text pieces are the answer's content only; its tool calls come in the Result, their
        arguments held to each tool's schema. ``tool_choice`` (vLLM's meaning): "auto" (the model decides),
        "required" (it calls at least one tool), a tool's name (it calls that one), or "none" (no tools offered).
        ``truncate`` (Ollama's): drop the oldest turns to fit the context, else refuse what does not fit;
        ``shift``: an answer that fills the window goes on after more of them are dropped, else it ends there.
        ``think_if_able``: a model that cannot think answers without thinking rather than refusing ``think``.
        """
        if tool_choice == "none":
            tools = None
        elif not tools and tool_choice != "auto":
            raise InvalidOption("tool_choice: the request offers no tools")
        request = Chat(history=history, structure=structure, tools=tools, tool_choice=tool_choice,
                              think=think, think_if_able=think_if_able, logprobs=logprobs, truncate=truncate,
                              shift=shift)
        return self._answer(resolved, lambda backend: backend.chat(resolved, request))

    def complete(self, resolved: Resolved, request: Completion) -> AsyncIterator[str | Thought | Prompted | Result]:
        """Continue text without a chat turn: raw, infill, or after an earlier exchange's tokens."""
        return self._answer(resolved, lambda backend: backend.complete(resolved, request))

    async def count_tokens(self, resolved: Resolved, history: list[Turn], *,
                           tools: list[dict[str, Any]] | None = None) -> int:
        """How many tokens the conversation's prompt takes with the model's chat template (the model is loaded)."""
        await self.retire_replaced()
        async with self.scheduler.use(resolved) as runner:
            return await runner.backend.count_tokens(resolved, history, tools=tools)

    async def embed(self, resolved: Resolved, texts: list[str], *, truncate: bool = True,
                    cancel: threading.Event | None = None) -> EmbedResult:
        """Raw vectors for ``texts`` (none: just load the model); ``cancel`` (set when the client is gone) stops it
        between texts."""
        started = time.perf_counter_ns()
        await self.retire_replaced()
        async with self.scheduler.use(resolved) as runner:
            acquired = time.perf_counter_ns()
            embeddings = await runner.backend.embed(resolved, texts, truncate=truncate, cancel=cancel) \
                if texts else Embeddings([], 0)
        return EmbedResult(embeddings, load_ns=acquired - started, total_ns=time.perf_counter_ns() - started)

    async def upstream_info(self, resolved: Resolved) -> dict[str, Any]:
        """What the engines serving an alias elsewhere report of its model (``/api/show``'s extra keys); none for
        an alias served here."""
        if not resolved.load.upstream:
            return {}
        upstream = Upstream.of(resolved)
        try:
            return await upstream.model_info(resolved.model)
        finally:
            await upstream.aclose()

    async def _answer(self, resolved: Resolved, ask: Callable[[Backend], AsyncIterator[Event]]
                      ) -> AsyncIterator[str | Thought | Prompted | Result]:
        """Hold the alias's backend for one answer; its last item, timed, counted and logged, becomes a Result."""
        started = time.perf_counter_ns()
        await self.retire_replaced()  # edits picked up outside the watcher (a name looked up again)
        async with self.scheduler.use(resolved) as runner:
            acquired = time.perf_counter_ns()
            async with aclosing(ask(runner.backend)) as events:  # a client that leaves stops the backend
                async for item in events:
                    if isinstance(item, Prompted) and item.dropped_turns:
                        self._dropped(resolved, item)
                    if not isinstance(item, Done):
                        yield item
                        continue
                    self.metrics.answered(resolved.name, item.finished.stats)
                    result = Result(finished=item.finished, prompt_ids=item.prompt_ids, load_ns=acquired - started,
                                    total_ns=time.perf_counter_ns() - started, tool_calls=item.tool_calls,
                                    thinking=item.thinking)
                    self._logged(resolved, item.logged_messages, result)
                    yield result
                    return

    def _dropped(self, resolved: Resolved, prompted: Prompted) -> None:
        """Say that the oldest turns were left out to fit the context: a client may think they were read."""
        log.info("%s: %d of the conversation's oldest turns left out to fit its context of %s tokens", resolved.name,
                 prompted.dropped_turns, resolved.parameters.ctx or "the model's")
        self.metrics.turns_dropped.labels(resolved.name).inc(prompted.dropped_turns)

    def _logged(self, resolved: Resolved, messages: list[dict[str, Any]], result: Result) -> None:
        if self.request_log is None:
            return
        finished, stats = result.finished, result.finished.stats
        self.request_log.record(LogEntry(
            model=resolved.model, alias=resolved.alias, messages=messages, response=finished.text,
            settings=effective_settings(resolved), thinking=result.thinking,
            tool_calls=[call.model_dump() for call in result.tool_calls], prompt_tokens=stats.prompt_tokens,
            generated_tokens=stats.generated_tokens, duration_ms=result.total_ns / 1e6,
            first_token_ms=stats.prompt_eval_ns / 1e6, done_reason=stats.done_reason, client=current_client.get()))


async def collect(first: str | Thought | Result, events: AsyncIterator[str | Thought | Prompted | Result]
                  ) -> tuple[list[str], Result]:
    """A whole answer, for clients that do not stream (its thinking is in the Result). Closing the stream
    gives the model back at once."""
    pieces: list[str] = []
    item = first
    try:
        while not isinstance(item, Result):
            if isinstance(item, str):
                pieces.append(item)
            item = await anext(events)
    finally:
        await events.aclose()
    return pieces, item


def effective_settings(resolved: Resolved) -> str:
    """The settings a request runs with, as one line of JSON (the ``X-Hllama-Effective`` header).

    Bounded whatever an alias holds (clients refuse headers of a few KB): every name and layer, but long
    texts (a system prompt, a path) cut to their start plus a hash, and lists to their first few items.
    """
    document = {
        "model": _bounded(resolved.model), "alias": resolved.alias, "system": _bounded(resolved.system),
        "parameters": _bounded(resolved.parameters.model_dump(exclude_none=True)),
        "load": _bounded(resolved.load.model_dump(exclude_none=True)),
        "sources": {key: layer.value for key, layer in resolved.sources.items()},
    }
    return json.dumps(document, ensure_ascii=True, separators=(",", ":"))


#: What the header keeps of one text, and of one list.
_HEADER_TEXT, _HEADER_ITEMS = 48, 4


def _bounded(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _HEADER_TEXT:
        return f"{value[:_HEADER_TEXT // 2]}...(sha256:{hashlib.sha256(value.encode()).hexdigest()[:12]}, " \
               f"{len(value)} chars)"
    if isinstance(value, list):
        kept = [_bounded(item) for item in value[:_HEADER_ITEMS]]
        return kept + ([f"...{len(value) - _HEADER_ITEMS} more"] if len(value) > _HEADER_ITEMS else [])
    if isinstance(value, dict):
        return {key: _bounded(item) for key, item in value.items()}
    return value
