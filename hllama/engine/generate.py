"""Streaming generation: text pieces as they are decoded, then one :class:`Finished` with statistics.

``model.generate`` runs in a worker thread and a streamer hands each new token back. Decoding and
stop-string matching happen in that thread too, so generation halts on the very token that
completes a stop string; the consumer only drains a queue. Errors in the worker reach the
consumer; a consumer that stops early (or sets ``cancel``) stops the worker at the next token.
Nothing here knows about HTTP or terminals.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

from hllama.engine.batch import Row, cache_keyword
from hllama.engine.events import END, DoneReason, Finished, Stats
from hllama.engine.grammar import Structure, ThinkingMode
from hllama.engine.loaded import LoadedModel
from hllama.engine.stops import StopMatcher
from hllama.engine.streamer import Streamer, eos_ids_of, id_list, vocab_size_of
from hllama.errors import InvalidOption, PromptTooLong
from hllama.options import Parameters

log = logging.getLogger(__name__)


class Generation:
    """One generation, run on the model's own threads. Its sink receives ``str`` pieces, maybe an exception, then
    :data:`END`.

    The sink is called from the generating thread: a queue's ``put`` for :func:`stream`, or anything that
    hands items to another thread or an event loop. The threads belong to the loaded model and are reused,
    so torch's per-thread state (its CPU thread pool) stays warm from one request to the next.
    """

    def __init__(self, loaded: LoadedModel, prompt_ids: list[int], params: Parameters, *,
                 sink: Callable[[Any], None], stops: tuple[str, ...] = (), cancel: threading.Event | None = None,
                 logprobs: int | None = None, structure: Structure | None = None,
                 thinking: ThinkingMode = "no", vision: dict[str, Any] | None = None,
                 refit: Callable[[int], list[int] | None] | None = None) -> None:
        """``logprobs``: None for none, else how many alternatives to report with each token (0 to 20).
        ``structure``: the JSON schema or pattern the answer must follow (enforced token by token); ``thinking``:
        whether the model may think first (see :data:`~hllama.engine.grammar.ThinkingMode`). ``refit``: where
        the answer may go on once it fills the window, a shorter prompt that leaves at least the given number of
        tokens free (None: there is none); without it such an answer ends there, its reason "length"."""
        if not prompt_ids:
            raise InvalidOption("the prompt has no tokens (did the template render nothing?)")
        self.started = time.perf_counter_ns()
        self.cancel = cancel or threading.Event()
        self.prompt_length = len(prompt_ids)
        self.prompt_ids = list(prompt_ids)  # the prompt the answer follows now (a shift shortens it)
        self.context = loaded.context_for(params.ctx)  # the window: ``ctx``, never past the model's own
        self.wanted = params.max_new_tokens if params.max_new_tokens not in (None, -1) else None
        self.limit = _token_limit(self.context, self.wanted, len(prompt_ids))
        self.refit = refit if vision is None else None  # an image's tokens are read with its prompt alone
        self.shifts = 0
        self._params, self._loaded = params, loaded
        model = loaded.model
        eos_ids = eos_ids_of(model, loaded.tokenizer)
        constraint = None
        if structure is not None:
            from hllama.engine.grammar import constraint_for

            constraint = constraint_for(structure, loaded.grammar_tokenizer, thinking=thinking, budget=self.limit)
        self.worker = Streamer(loaded.tokenizer, StopMatcher([*(params.stop or []), *stops]), self.cancel,
                              eos_ids, sink)
        self.worker.top_logprobs = logprobs or 0
        self._executor = loaded.executor
        self._future: Future[None] | None = None
        self._row: Row | None = None
        self._batcher = loaded.batcher if vision is None else None  # images go through generate, with the model's
        self._vision = vision  # own code for them (see _generate_call)
        if self._batcher is not None and self.limit > 0:
            from hllama.engine.picking import RowSampler

            sampler = RowSampler(params, prompt_ids, vocab_size=vocab_size_of(model), device=model.device,
                                 constraint=constraint)
            self._row = Row(prompt_ids=list(prompt_ids), limit=self.limit, sampler=sampler, worker=self.worker,
                            cancel=self.cancel, logprobs=logprobs is not None, follow=self._follow)
        elif self.limit > 0:
            def answer() -> None:
                while True:
                    kwargs, keep = self._generate_call(eos_ids, logprobs is not None, constraint)
                    keep(model.generate(**kwargs))
                    if self._shifted() is None:
                        return

            self._run = lambda: self.worker.run(answer)
        else:  # num_predict 0 asks for no new token (llama.cpp's meaning): the answer is empty, its reason "length"
            self._run = self.worker.finish

    def _shifted(self) -> list[int] | None:
        """Where the answer filled the window (not its num_predict, not a stop), the prompt with more of the
        oldest turns dropped, followed by the answer so far, which goes on from there; None: it ends here."""
        worker = self.worker
        answered = len(worker.ids)
        if (self.refit is None or self.context is None or answered < self.limit or worker.saw_eos
                or worker.matcher.stopped or self.cancel.is_set()
                or (self.wanted is not None and answered >= self.wanted)):
            return None
        from hllama.engine.prompt import answer_room

        wanted = None if self.wanted is None else self.wanted - answered
        try:  # room for the answer so far and as much again as a prompt leaves; else for one more token at least
            prompt = self.refit(answered + max(answer_room(wanted, self.context), 1)) or self.refit(answered + 1)
        except Exception:  # the shorter conversation does not render: this answer ends here, the others go on
            log.exception("the answer cannot go on after a shorter prompt")
            return None
        if prompt is None:
            return None
        self.prompt_ids = prompt
        self.limit = answered + _token_limit(self.context, wanted, len(prompt) + answered)
        self.shifts += 1
        log.info("the answer filled the %d-token window after %d tokens: it goes on after a prompt of %d tokens "
                 "with older turns dropped", self.context, answered, len(prompt))
        return [*prompt, *worker.ids]

    def _follow(self) -> bool:
        """A batched row's answer filled the window: it goes on in a new row after a shorter prompt."""
        if (ids := self._shifted()) is None:
            return False
        row = self._row
        assert row is not None and self._batcher is not None
        row.sampler.reread(ids)
        self._row = Row(prompt_ids=ids, limit=self.limit, sampler=row.sampler, worker=row.worker, cancel=row.cancel,
                        logprobs=row.logprobs, ended=row.ended, answered=len(row.worker.ids), follow=self._follow)
        self._batcher.submit(self._row)
        return True

    def _generate_call(self, eos_ids: list[int], logprobs: bool, constraint: Any
                       ) -> tuple[dict[str, Any], Callable[[Any], None]]:
        """``generate``'s arguments for a model that is not batched, going on from the answer so far (after a
        shift), and what keeps its cache afterwards."""
        import torch
        from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

        from hllama.engine.sampling import GrammarMask, LogprobRecorder, logits_processors

        loaded, params, prompt_ids = self._loaded, self._params, self.prompt_ids
        model, worker, cancel = loaded.model, self.worker, self.cancel
        answered = list(worker.ids)
        input_ids = [*prompt_ids, *answered]
        processors = logits_processors(params, prompt_length=len(prompt_ids), answered=len(answered))
        if constraint is not None:  # before the penalties, as in a batch
            processors.insert(0, GrammarMask(constraint, prompt_length=len(input_ids)))
        if logprobs:
            worker.recorder = LogprobRecorder()
            processors.insert(0, worker.recorder)
        worker.expect_prompt()

        class _StopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                halt = worker.matcher.stopped or cancel.is_set()
                return torch.full((input_ids.shape[0],), halt, dtype=torch.bool, device=input_ids.device)

        config = GenerationConfig(max_new_tokens=self.limit - len(answered), do_sample=False, eos_token_id=eos_ids,
                                  pad_token_id=_pad_token_id(loaded), bos_token_id=model.generation_config.bos_token_id,
                                  return_dict_in_generate=True)  # its KV cache comes back, for the next turn
        ids = torch.tensor([input_ids], device=model.device)
        kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                      logits_processor=processors,
                      stopping_criteria=StoppingCriteriaList([_StopWhenAsked()]), streamer=worker)
        vision = self._vision
        if vision is not None:  # an image's tokens are not text: no earlier turn's cache holds them
            kwargs |= {key: _on(model, value) for key, value in vision.items()}
        else:
            cache, reused = loaded.prefixes.take(input_ids)  # an earlier turn's KV cache, if one shares
            if not answered:  # counted for the first prompt only (Ollama's prompt_eval_count)
                worker.reused = reused
            if cache is not None:
                kwargs[cache_keyword(type(model))] = cache

        def keep(result: Any) -> None:
            """An answer that ended by itself leaves its cache for the next turn."""
            if result is not None and not cancel.is_set() and vision is None:  # ``cache`` since transformers 5.24
                cache = result.get("cache") if "cache" in result else result.get("past_key_values")
                loaded.prefixes.put([*prompt_ids, *worker.ids], cache)

        return kwargs, keep

    def start(self) -> Generation:
        if self._row is not None:
            self._batcher.submit(self._row)
        else:
            self._future = self._executor.submit(self._run)
        return self

    def join(self) -> None:
        if self._row is not None:
            self._row.ended.wait()
        elif self._future is not None:
            self._future.result()

    def finished(self) -> Finished:
        """The result, once the sink has received :data:`END` (call before setting ``cancel`` yourself)."""
        worker = self.worker
        ended = worker.ended_at or time.perf_counter_ns()
        first = worker.first_token_at or ended
        return Finished(text=worker.matcher.text, generated_ids=list(worker.ids), logprobs=tuple(worker.logprobs),
                        stop_sequence=worker.matcher.matched, stats=Stats(
            prompt_tokens=self.prompt_length, generated_tokens=len(worker.ids), prompt_eval_ns=first - self.started,
            eval_ns=ended - first, total_ns=ended - self.started, cached_tokens=worker.reused,
            done_reason=_done_reason(worker, self.limit, cancelled=self.cancel.is_set())))


def stream(loaded: LoadedModel, prompt_ids: list[int], params: Parameters, *, stops: tuple[str, ...] = (),
           cancel: threading.Event | None = None) -> Iterator[str | Finished]:
    """Generate from ``prompt_ids``; yields ``str`` pieces, then a :class:`Finished`."""
    events: queue.Queue[Any] = queue.Queue()
    generation = Generation(loaded, prompt_ids, params, sink=events.put, stops=stops, cancel=cancel).start()
    try:
        while (item := events.get()) is not END:
            if isinstance(item, BaseException):
                raise item
            yield item
        finished = generation.finished()
    finally:
        generation.cancel.set()
        generation.join()
    yield finished


def _done_reason(worker: Streamer, limit: int, *, cancelled: bool) -> DoneReason:
    if worker.matcher.stopped or worker.saw_eos:
        return "stop"
    if cancelled:
        return "cancel"
    return "length" if len(worker.ids) >= limit else "stop"


def _on(model: Any, value: Any) -> Any:
    """An image input on the model's device, pixels in its dtype."""
    if not hasattr(value, "to"):
        return value
    return value.to(model.device, dtype=model.dtype) if value.is_floating_point() else value.to(model.device)


def _token_limit(context: int | None, wanted: int | None, used: int) -> int:
    """New tokens ``wanted`` (None: unlimited), never past the ``context`` window that ``used`` tokens fill."""
    room = context - used if context else None
    if room is not None and room <= 0:
        raise PromptTooLong(used + 1, context)
    candidates = [value for value in (wanted, room) if value is not None]
    return min(candidates) if candidates else 2048


def _pad_token_id(loaded: LoadedModel) -> int | None:
    tokenizer = loaded.tokenizer
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    eos = id_list(loaded.model.generation_config.eos_token_id)
    return eos[0] if eos else None


