"""Logits processors: OpenAI's presence/frequency penalties and per-request seeded sampling.

transformers has neither. Sampling here happens inside the processor list from the request's own seed
(generate itself runs greedy over the result), so a seed reproduces its output however many other
requests run at the same time: no process-global random state is involved.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from hllama.engine.noise import exponential, seed_of, step_key
from hllama.options import Parameters


class PresenceFrequencyPenalty(LogitsProcessor):
    """``logit -= frequency × count(token) + presence × [count > 0]``, counting generated tokens only."""

    def __init__(self, *, presence: float, frequency: float, prompt_length: int) -> None:
        self.presence = presence
        self.frequency = frequency
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length:]
        counts = torch.zeros_like(scores)
        counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


#: Below this, dividing logits by the temperature overflows float32: such a temperature decodes greedily.
GREEDY_BELOW = 1e-4


class SeededSampler(LogitsProcessor):
    """Draw the next token from the request's own seed; every other token gets ``-inf``.

    The draw is the one batched decoding makes (:mod:`hllama.engine.noise`), so a seed gives the same
    answer through ``generate`` as in a batch (:func:`~hllama.engine.noise.seed_of` says how a seed is read).
    """

    def __init__(self, seed: int | None, *, steps: int = 0) -> None:
        self.seed = seed_of(seed)
        self.steps = steps  # tokens drawn before (an answer that goes on after a shift draws on)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        keys = torch.full((scores.shape[0], 1), step_key(self.seed, self.steps), dtype=torch.long,
                          device=scores.device)
        self.steps += 1
        tokens = torch.arange(scores.shape[-1], device=scores.device).expand(scores.shape[0], -1)
        race = finite(scores.float()) - exponential(keys, tokens).log()
        chosen = race.argmax(dim=-1, keepdim=True)
        picked = torch.full_like(scores, float("-inf"))
        return picked.scatter_(1, chosen, 0.0)


class GrammarMask(LogitsProcessor):
    """A structured answer's grammar, for ``generate``: each step hands it the token the last one chose, then
    lets through only what the grammar allows next."""

    def __init__(self, constraint: Any, *, prompt_length: int) -> None:
        self.constraint = constraint
        self.seen = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for token in input_ids[0, self.seen:].tolist():
            self.constraint.accept(token)
        self.seen = input_ids.shape[1]
        self.constraint.mask(scores[0])
        return scores


def finite(scores: torch.Tensor) -> torch.Tensor:
    """Logits an extreme penalty pushed to +inf (or NaN) would make every probability NaN: the tokens at +inf
    share the draw, and NaN counts as excluded."""
    return torch.nan_to_num(scores, nan=float("-inf"), posinf=torch.finfo(scores.dtype).max)


class LogprobRecorder(LogitsProcessor):
    """Keeps the current step's log-probabilities over the vocabulary, before any penalty or sampling changes
    them; the streamer reads them when the step's token arrives (only the latest row is kept)."""

    def __init__(self) -> None:
        self.latest: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.latest = torch.log_softmax(scores[0].float(), dim=-1)
        return scores


def repetition_window(params: Parameters) -> int | None:
    """How many of the latest tokens (prompt and answer) the repetition penalty reads: Ollama's
    ``repeat_last_n``, where 0 turns the penalty off and -1 (or unset) means every token of the context.
    None: it is off."""
    if params.repetition_penalty in (None, 1.0) or params.repeat_last_n == 0:
        return None
    return params.repeat_last_n if params.repeat_last_n and params.repeat_last_n > 0 else ALL_TOKENS


#: The repetition window of a penalty over the whole context.
ALL_TOKENS = -1


class RecentRepetitionPenalty(RepetitionPenaltyLogitsProcessor):
    """transformers' repetition penalty over the latest ``window`` tokens only (ALL_TOKENS: every one)."""

    def __init__(self, penalty: float, window: int) -> None:
        super().__init__(penalty)
        self.window = window

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        recent = input_ids if self.window == ALL_TOKENS else input_ids[:, -self.window:]
        return super().__call__(recent, scores)


def temperature_of(params: Parameters) -> float:
    """The temperature a request samples at: its own, else 1.0 (transformers' and OpenAI's default)."""
    return params.temperature if params.temperature is not None else 1.0


def logits_processors(params: Parameters, *, prompt_length: int, answered: int = 0) -> LogitsProcessorList:
    """Penalties first, then (unless temperature is 0: greedy) the warpers and the sampler. ``prompt_length``:
    the tokens before the answer; ``answered``: answer tokens already drawn, after them (a shifted window)."""
    processors: list[LogitsProcessor] = []
    if (window := repetition_window(params)) is not None:
        processors.append(RecentRepetitionPenalty(params.repetition_penalty, window))
    if params.presence_penalty or params.frequency_penalty:
        processors.append(PresenceFrequencyPenalty(presence=params.presence_penalty or 0.0,
                                                   frequency=params.frequency_penalty or 0.0,
                                                   prompt_length=prompt_length))
    temperature = temperature_of(params)
    if temperature >= GREEDY_BELOW:
        if temperature != 1.0:
            processors.append(TemperatureLogitsWarper(temperature))
        if params.top_k:
            processors.append(TopKLogitsWarper(params.top_k))
        if params.top_p is not None and params.top_p < 1.0:
            processors.append(TopPLogitsWarper(params.top_p))
        if params.min_p:
            processors.append(MinPLogitsWarper(params.min_p))
        processors.append(SeededSampler(params.seed, steps=answered))
    return LogitsProcessorList(processors)
