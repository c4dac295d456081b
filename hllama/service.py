"""What every front end shares: resolving a request's model and settings, and streaming its answer.

The server's routes translate their wire format into a :class:`Resolved` plus messages (or a raw
prompt) and iterate :meth:`Service.chat` / :meth:`Service.complete`; ``hllama chat`` and ``run`` go
through the same :meth:`Service.chat`, so a model is loaded, scheduled and prompted one way. All
model work runs in threads so the event loop stays free for other requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from hllama import vllm_server
from hllama.config import Settings
from hllama.engine import Finished, LoadedModel, Prompt, Stats, build_prompt, conversation
from hllama.engine.embed import Embeddings, embed
from hllama.engine.generate import END, Generation, TokenLogprob
from hllama.engine.grammar import Structure, structure_of, thinking_mode
from hllama.engine.prompt import answer_room
from hllama.engine.thinking import ThinkingParts, Thought
from hllama.engine.tools import ToolCall, ToolCalls, ToolCallStream, parse_tool_calls
from hllama.errors import AliasNotFound, HllamaError, InvalidOption, NotSupported
from hllama.hardware import Budget, memory_budget
from hllama.metrics import Metrics
from hllama.modelfile import Message
from hllama.registry import Registry, changes
from hllama.requestlog import Entry as LogEntry
from hllama.requestlog import RequestLog, current_client
from hllama.resolve import Overrides, Resolved, resolve
from hllama.scheduler import Scheduler, load_key
from hllama.store import AliasStore
from hllama.upstream import Answer, Upstream, completion_body, is_upstream, request_body

log = logging.getLogger("hllama.server")

T = TypeVar("T")


@dataclass(frozen=True)
class Result:
    """The end of one answer: the engine's statistics, plus what only the server measures."""

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
    """The real thing: the engine behind the scheduler, the budget detected once at start. ``force`` loads
    even what looks too large for memory (``hllama chat --force``)."""
    from hllama.engine import load_model, locate, plan_load

    budget = budget or memory_budget(settings)

    def size(resolved: Resolved, available: int) -> int:
        if resolved.load.upstream:
            return 0
        source = locate(resolved.model, resolved.revision)
        load_plan = plan_load(resolved, source, replace(budget, bytes=available))
        if resolved.load.engine == "vllm":
            needed = vllm_server.footprint(resolved, load_plan.chosen.weights, device=budget.device,
                                           available=available)
        elif not load_plan.fits and not force:  # more than the whole budget: no eviction would make room
            raise load_plan.refusal(resolved.model)
        else:
            needed = load_plan.chosen.total
        return min(needed, available) if force else needed

    def load(resolved: Resolved, available: int) -> LoadedModel | Upstream:
        if resolved.load.upstream:
            return Upstream.of(resolved)
        if resolved.load.engine == "vllm":
            server = vllm_server.ManagedVllm(resolved, python=settings.vllm_python, log_dir=settings.home / "logs")
            server.reserved_bytes = size(resolved, available)
            return server
        return load_model(resolved, budget=replace(budget, bytes=available, source="memory left for models"),
                          force=force)

    scheduler = Scheduler(load=load, size=size, budget=budget.bytes, max_loaded=settings.max_loaded_models,
                          max_queue=settings.max_queue, parallel=settings.num_parallel)
    return Service(settings=settings, store=AliasStore(settings), scheduler=scheduler, budget=budget)


class Service:
    def __init__(self, *, settings: Settings, store: AliasStore, scheduler: Scheduler, budget: Budget) -> None:
        self.settings = settings
        self.store = store
        self.scheduler = scheduler
        self.budget = budget
        self.registry: Registry = store.refresh()
        self._replaced: set[tuple] = set()
        self._running: set[threading.Event] = set()  # the cancel events of generations under way
        self.metrics = Metrics()
        self.metrics.watch(scheduler)
        scheduler.observer = self.metrics
        self.request_log = RequestLog(settings.home / "logs.db", retention=settings.log_retention,
                                      dropped=self.metrics.log_dropped.inc) if settings.log_requests else None

    def close_log(self) -> None:
        """Write what the request log still holds (at shutdown)."""
        if self.request_log is not None:
            self.request_log.close()

    def _logged(self, resolved: Resolved, messages: list[dict[str, Any]], result: Result, *, tools: bool) -> None:
        if self.request_log is None:
            return
        finished, stats = result.finished, result.finished.stats
        calls = parse_tool_calls(finished.text)[1] if tools else list(result.tool_calls)
        self.request_log.record(LogEntry(
            model=resolved.model, alias=resolved.alias, messages=messages, response=finished.text,
            settings=effective_settings(resolved), thinking=result.thinking,
            tool_calls=[call.model_dump() for call in calls], prompt_tokens=stats.prompt_tokens,
            generated_tokens=stats.generated_tokens, duration_ms=result.total_ns / 1e6,
            first_token_ms=stats.prompt_eval_ns / 1e6, done_reason=stats.done_reason, client=current_client.get()))

    def cancel_all(self) -> None:
        """Stop every generation under way (within a token, or a layer of the pass reading its prompt): the server is
        going away. Safe to call from a signal handler."""
        for cancel in list(self._running):
            cancel.set()

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

    def chat(self, resolved: Resolved, history: list[Message], *, structure: Structure | None = None,
             tools: list[dict[str, Any]] | None = None, tool_choice: str = "auto", think: bool | str | None = None,
             logprobs: int | None = None, truncate: bool = True, shift: bool = True
             ) -> AsyncIterator[str | Thought | Result]:
        """Pieces of the answer, then a :class:`Result`. Close it (``aclose``) to stop early and free the model.

        A thinking model's thinking comes as :class:`Thought` pieces (``think=False`` drops it). With
        ``tools``, the text pieces are the answer's content only; its tool calls come in the Result, their
        arguments held to each tool's schema. ``tool_choice`` (vLLM's meaning): "auto" (the model decides),
        "required" (it calls at least one tool), a tool's name (it calls that one), or "none" (no tools offered).
        ``truncate`` (Ollama's): drop the oldest turns to fit the context, else refuse what does not fit;
        ``shift``: an answer that fills the window goes on after more of them are dropped, else it ends there.
        """
        if tool_choice == "none":
            tools = None
        elif not tools and tool_choice != "auto":
            raise InvalidOption("tool_choice: the request offers no tools")
        if is_upstream(resolved):
            messages = conversation(resolved, history, json_schema=structure if isinstance(structure, dict) else None)
            return self._relay(resolved, lambda upstream: request_body(
                resolved, messages, structure=structure_of(resolved.parameters, structure), tools=tools,
                tool_choice=tool_choice, think=think, logprobs=logprobs, context=upstream.context_length))

        def prompt_for(loaded: LoadedModel):
            messages = conversation(resolved, history, json_schema=structure if isinstance(structure, dict) else None)
            context = loaded.context_for(resolved.parameters.ctx)
            prompt = build_prompt(loaded.tokenizer, messages, template=resolved.template, ctx=context,
                                  reserve=answer_room(resolved.parameters.max_new_tokens, context), truncate=truncate,
                                  tools=tools, think=think, model=resolved.name, processor=loaded.processor)
            return prompt if shift else replace(prompt, refit=None)

        def structure_for(prompt: Prompt) -> Structure | None:
            calls = ToolCalls.of(tools, style=prompt.tool_style, choice=tool_choice) if prompt.tool_style else None
            return structure_of(resolved.parameters, structure, calls)

        events = self._generate(resolved, prompt_for, logprobs=logprobs, structure=structure_for)
        return _taking_out_tool_calls(events) if tools else events

    async def _relay(self, resolved: Resolved, body_for: Callable[[Upstream], dict[str, Any]], *,
                     path: str = "/chat/completions") -> AsyncIterator[str | Thought | Result]:
        """An alias served by engines in other processes: the request ``body_for`` builds goes to one of them."""
        started = time.perf_counter_ns()
        await self.retire_replaced()
        async with self.scheduler.use(resolved) as runner:
            acquired = time.perf_counter_ns()
            upstream: Upstream = runner.model  # type: ignore[assignment]
            body = body_for(upstream)
            answer = Answer()
            first: int | None = None
            async with contextlib.aclosing(upstream.stream(body, path=path)) as chunks:  # a client that leaves
                async for chunk in chunks:
                    content, thought = answer.add(chunk)
                    if first is None and (content or thought):
                        first = time.perf_counter_ns()
                    if thought:
                        yield Thought(thought)
                    if content:
                        yield content
            ended = time.perf_counter_ns()
            first = first or ended
            stats = Stats(prompt_tokens=answer.prompt_tokens, generated_tokens=answer.completion_tokens,
                          prompt_eval_ns=first - acquired, eval_ns=ended - first, total_ns=ended - acquired,
                          cached_tokens=answer.cached_tokens,
                          done_reason="length" if answer.finish_reason == "length" else "stop")
            finished = Finished(text=answer.text, stats=stats, generated_ids=[], stop_sequence=answer.stop_sequence,
                                logprobs=tuple(_token_logprobs(answer.logprobs)))
            self.metrics.answered(resolved.name, stats)
            result = Result(finished=finished, prompt_ids=[], load_ns=acquired - started, total_ns=ended - started,
                            tool_calls=tuple(answer.tool_calls()), thinking=answer.thinking)
            self._logged(resolved, body.get("messages") or [{"role": "user", "content": body.get("prompt", "")}],
                         result, tools=False)
            yield result

    async def count_tokens(self, resolved: Resolved, history: list[Message], *,
                           tools: list[dict[str, Any]] | None = None) -> int:
        """How many tokens the conversation's prompt takes with the model's chat template (the model is loaded)."""
        if is_upstream(resolved):
            raise NotSupported(resolved.name, "counting tokens", "it is served by an engine in another process")
        await self.retire_replaced()
        async with self.scheduler.use(resolved) as runner:
            loaded: LoadedModel = runner.model  # type: ignore[assignment]
            prompt = await asyncio.to_thread(build_prompt, loaded.tokenizer, conversation(resolved, history),
                                             template=resolved.template, tools=tools, model=resolved.name,
                                             processor=loaded.processor)
        return len(prompt.ids)

    async def embed(self, resolved: Resolved, texts: list[str], *, truncate: bool = True,
                    cancel: threading.Event | None = None) -> EmbedResult:
        """Raw vectors for ``texts`` (none: just load the model), computed on the model's own thread pool; ``cancel``
        (set when the client is gone) stops it between texts."""
        started = time.perf_counter_ns()
        if is_upstream(resolved) and texts:
            await self.retire_replaced()
            async with self.scheduler.use(resolved) as runner:
                acquired = time.perf_counter_ns()
                vectors, tokens = await runner.model.embed(resolved.model, texts)  # type: ignore[attr-defined]
            return EmbedResult(Embeddings(vectors, tokens), load_ns=acquired - started,
                               total_ns=time.perf_counter_ns() - started)
        await self.retire_replaced()
        async with self.scheduler.use(resolved) as runner:
            acquired = time.perf_counter_ns()
            loaded: LoadedModel = runner.model  # type: ignore[assignment]
            work = functools.partial(embed, loaded.model, loaded.tokenizer, texts,
                                     pooling=loaded.pooling,
                                     context=loaded.context_for(resolved.parameters.ctx), truncate=truncate,
                                     cancel=cancel)
            embeddings = await asyncio.get_running_loop().run_in_executor(loaded.executor, work)
        return EmbedResult(embeddings, load_ns=acquired - started, total_ns=time.perf_counter_ns() - started)

    def complete(self, resolved: Resolved, prompt_ids: Callable[[LoadedModel], list[int]], *,
                 logprobs: int | None = None, structure: Structure | None = None, text: str | None = None,
                 suffix: str | None = None) -> AsyncIterator[str | Result]:
        """Generate from tokens the caller builds (raw prompts, ``context`` continuations, infill). An engine in
        another process is given the raw ``text`` (and ``suffix``) instead; without them it cannot be asked."""
        if is_upstream(resolved):
            if text is None:
                raise NotSupported(resolved.name, "context", "it is served by an engine in another process, "
                                                             "which does not take this model's token ids")
            return self._relay(resolved, lambda upstream: completion_body(
                resolved, text, suffix=suffix, logprobs=logprobs, context=upstream.context_length), path="/completions")
        return self._generate(resolved, lambda loaded: _RawPrompt(prompt_ids(loaded)), logprobs=logprobs,
                              structure=lambda prompt: structure_of(resolved.parameters, structure))

    async def _generate(self, resolved: Resolved, prompt_for: Callable[[LoadedModel], Any], *,
                        structure: Callable[[Any], Structure | None], logprobs: int | None = None
                        ) -> AsyncIterator[str | Thought | Result]:
        """``logprobs``: None for none, else how many alternatives each token's entry lists. ``structure``: what
        the answer to a prompt must follow (enforced token by token), if anything."""
        started = time.perf_counter_ns()
        await self.retire_replaced()  # edits picked up outside the watcher (a name looked up again)
        async with self.scheduler.use(resolved) as runner:
            acquired = time.perf_counter_ns()
            loaded: LoadedModel = runner.model  # type: ignore[assignment]
            if not loaded.generates:
                raise NotSupported(resolved.name, "generation", "it is an embedding model; use /api/embed")
            prompt = await asyncio.to_thread(prompt_for, loaded)
            parts = ThinkingParts(prompt)
            sink = LoopSink(asyncio.get_running_loop())
            generation = await asyncio.to_thread(  # compiling a large schema's grammar may take a while
                functools.partial(Generation, loaded, prompt.ids, resolved.parameters, sink=sink,
                                  stops=prompt.extra_stops, logprobs=logprobs, thinking=thinking_mode(prompt),
                                  structure=structure(prompt), vision=getattr(prompt, "vision", None),
                                  refit=_ids_of(getattr(prompt, "refit", None))))
            self._running.add(generation.cancel)
            generation.start()
            try:
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
                            finished = generation.finished()
                            self.metrics.answered(resolved.name, finished.stats)
                            result = Result(finished=finished, prompt_ids=generation.prompt_ids,
                                            load_ns=acquired - started, total_ns=time.perf_counter_ns() - started,
                                            thinking=parts.thinking)
                            self._logged(resolved, getattr(prompt, "messages", []), result,
                                         tools=getattr(prompt, "tool_style", None) is not None)
                            yield result
                            return
            finally:  # a client gone mid-stream lands here too: stop generating, then give the model back
                generation.cancel.set()
                self._running.discard(generation.cancel)
                await asyncio.shield(asyncio.to_thread(generation.join))


def _token_logprobs(items: list[dict[str, Any]]) -> Iterator[TokenLogprob]:
    """OpenAI's per-token log-probabilities as the engine's."""
    for item in items:
        top = tuple((str(other.get("token", "")), float(other.get("logprob", 0.0)))
                    for other in item.get("top_logprobs") or [] if isinstance(other, dict))
        yield TokenLogprob(token=str(item.get("token", "")), logprob=float(item.get("logprob", 0.0)), top=top)


async def _taking_out_tool_calls(events: AsyncIterator[str | Thought | Result]
                                 ) -> AsyncIterator[str | Thought | Result]:
    calls = ToolCallStream()
    try:
        async for item in events:
            if isinstance(item, Thought):
                yield item
                continue
            if isinstance(item, str):
                if piece := calls.feed(item):
                    yield piece
                continue
            rest, found = calls.finish()
            if rest:
                yield rest
            yield replace(item, tool_calls=tuple(found))
    finally:  # closed early by a client that left: give the model back now
        await events.aclose()


class LoopSink:
    """Hands items from a generating thread to the event loop, waking it once per batch.

    While the loop is busy, items pile up and are taken together, so a slow consumer costs one
    wake-up per batch rather than one per token.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._items: list[Any] = []
        self._ready = asyncio.Event()
        self._wake_pending = False

    def __call__(self, item: Any) -> None:
        with self._lock:
            self._items.append(item)
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the loop is closed: the server is going away
            pass

    async def take(self) -> list[Any]:
        await self._ready.wait()
        with self._lock:
            items, self._items = self._items, []
            self._wake_pending = False
            self._ready.clear()
        return items


async def collect(first: str | Thought | Result, events: AsyncIterator[str | Thought | Result]
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


def _ids_of(refit: Callable[[int], Prompt | None] | None) -> Callable[[int], list[int] | None] | None:
    """A prompt's ``refit`` as the engine takes it: token ids, not prompts."""
    if refit is None:
        return None
    return lambda room: None if (prompt := refit(room)) is None else prompt.ids


@dataclass(frozen=True)
class _RawPrompt:
    ids: list[int]
    extra_stops: tuple[str, ...] = ()


def effective_settings(resolved: Resolved, loaded: LoadedModel | None = None) -> str:
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
    if loaded is not None:
        document["precision"] = loaded.precision
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


_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


async def iterate_in_thread(make: Callable[[threading.Event], Iterator[T]]) -> AsyncIterator[T]:
    """Iterate a blocking iterator in a thread. Leaving early (a closed client) sets its cancel event."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    cancel = threading.Event()

    def hand_over(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone: the server is shutting down
            cancel.set()

    def pump() -> None:
        try:
            for item in make(cancel):
                hand_over(item)
        except BaseException as exc:
            hand_over(_Failure(exc))
        finally:
            hand_over(_DONE)

    thread = threading.Thread(target=pump, daemon=True, name="hllama-pump")
    thread.start()
    try:
        while (item := await queue.get()) is not _DONE:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        cancel.set()
        await asyncio.shield(asyncio.to_thread(thread.join))
