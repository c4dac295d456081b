"""Choosing every row's next token in one pass: per-request settings, seeds and history; shared tensor math.

Each request keeps its own :class:`RowSampler`: its settings, its own ``torch.Generator`` and the token
history its penalties read. :func:`pick` applies them to all rows of a step at once: penalties as masks
over each row's own history (never the whole vocabulary), greedy rows by one ``argmax``, sampling rows
by one ``topk`` over the rows' candidates. The draw is a Gumbel race, ``argmax log p - log q`` with
``q ~ Exp(1)``, where each token's ``q`` is a hash of (seed, step, token): it is the same whichever
tokens are looked at and in whatever order, so only the candidates' noise is ever computed, and a seed
gives the same answer alone and in a batch (exactly in float32).

The chain is the one :func:`hllama.engine.sampling.logits_processors` builds for ``generate``, in its
order: repetition penalty, presence and frequency penalties, then (temperature above
:data:`GREEDY_BELOW`) temperature, top_k, top_p, min_p and the draw.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from hllama.engine.noise import exponential, seed_of, step_key
from hllama.engine.sampling import ALL_TOKENS, GREEDY_BELOW, finite, repetition_window, temperature_of
from hllama.options import Parameters

if TYPE_CHECKING:
    from hllama.engine.grammar import Constraint

#: How many candidates a row without top_k is looked for among before its whole vocabulary is (top_p and
#: min_p almost always keep far fewer; when they do not, that row is done over the whole vocabulary).
CANDIDATES = 1024


class RowSampler:
    """One request's way of choosing tokens, and the history it needs (only what its penalties read)."""

    def __init__(self, params: Parameters, prompt_ids: Sequence[int], *, vocab_size: int,
                 device: torch.device | str = "cpu", constraint: Constraint | None = None) -> None:
        temperature = temperature_of(params)
        self.greedy = temperature < GREEDY_BELOW
        self.temperature = temperature
        self.top_k = params.top_k if params.top_k and params.top_k < vocab_size else 0
        self.top_p = params.top_p if params.top_p is not None and params.top_p < 1.0 else 1.0
        self.min_p = params.min_p or 0.0
        window = repetition_window(params)
        self.repetition = params.repetition_penalty if window is not None else None
        self.presence = params.presence_penalty or 0.0
        self.frequency = params.frequency_penalty or 0.0
        self.seed = seed_of(params.seed)
        self.device = torch.device(device)
        self.vocab_size = vocab_size
        self.steps = 0  # tokens chosen so far: each step's noise is its own
        # the repetition penalty's tokens: how often each is in its window (the latest repeat_last_n of prompt
        # and answer, or all of them), and those tokens as a tensor once asked for
        self._window = window
        self.reread(prompt_ids)
        self.counts: dict[int, int] = {}  # the answer's tokens: presence and frequency penalties'
        self.constraint = constraint  # the grammar a structured answer follows

    @property
    def truncates(self) -> bool:
        return bool(self.top_k or self.top_p < 1.0 or self.min_p)

    @property
    def penalises(self) -> bool:
        return self.repetition is not None or bool(self.presence or self.frequency)

    def accept(self, token: int) -> None:
        """The row's new token: the next step draws new noise, and the penalties and the grammar read it."""
        self.steps += 1
        if self.constraint is not None:
            self.constraint.accept(token)
        if self.repetition is not None:
            self._remember(token)
        if (self.presence or self.frequency) and 0 <= token < self.vocab_size:
            self.counts[token] = self.counts.get(token, 0) + 1

    def reread(self, ids: Sequence[int]) -> None:
        """The repetition penalty's history is ``ids``: the prompt, or after a shift the shorter prompt and the
        answer so far."""
        window = self._window
        self._recent: deque[int] | None = deque(maxlen=window) if window not in (None, ALL_TOKENS) else None
        self._seen: Counter[int] = Counter()
        self._seen_ids: torch.Tensor | None = None
        if self.repetition is not None:
            for token in ids[-window:] if self._recent is not None else ids:
                self._remember(token)

    def _remember(self, token: int) -> None:
        """The repetition penalty's window takes ``token``, and lets go of its oldest when full."""
        recent = self._recent
        if recent is not None and len(recent) == recent.maxlen and recent[0] in self._seen:
            oldest = recent[0]
            self._seen[oldest] -= 1
            if not self._seen[oldest]:
                del self._seen[oldest]
                self._seen_ids = None
        if recent is not None:
            recent.append(token)
        if 0 <= token < self.vocab_size:
            if token not in self._seen:
                self._seen_ids = None
            self._seen[token] += 1

    def penalise(self, scores: torch.Tensor) -> None:
        """Apply this row's penalties to its ``scores`` (``[vocab]``) in place, touching only tokens it has seen."""
        if self.repetition is not None and self._seen:
            if self._seen_ids is None:
                self._seen_ids = torch.tensor(sorted(self._seen), dtype=torch.long, device=scores.device)
            part = scores[self._seen_ids]
            scores[self._seen_ids] = torch.where(part < 0, part * self.repetition, part / self.repetition)
        if self.counts:
            ids = torch.tensor(list(self.counts), dtype=torch.long, device=scores.device)
            counts = torch.tensor(list(self.counts.values()), dtype=scores.dtype, device=scores.device)
            scores[ids] -= self.frequency * counts + self.presence

    @property
    def key(self) -> int:
        """This step's noise key, a signed 64-bit integer mixed from the seed and the step."""
        return step_key(self.seed, self.steps)


def pick(logits: torch.Tensor, samplers: Sequence[RowSampler]) -> list[int]:
    """Each row's next token. ``logits``: ``[rows, vocab]``, float32."""
    scores = penalised(logits, samplers)
    chosen = torch.empty(len(samplers), dtype=torch.long, device=scores.device)
    greedy = [row for row, sampler in enumerate(samplers) if sampler.greedy]
    if greedy:
        index = _index(greedy, scores)
        chosen[index] = scores.index_select(0, index).argmax(dim=-1)
    sampled = [row for row, sampler in enumerate(samplers) if not sampler.greedy]
    if sampled:
        chosen[_index(sampled, scores)] = _sample(scores, sampled, samplers)
    return chosen.tolist()


def _index(rows: list[int], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long, device=like.device)


def penalised(logits: torch.Tensor, samplers: Sequence[RowSampler]) -> torch.Tensor:
    """A structured answer's grammar mask; transformers' repetition penalty over prompt and answer; OpenAI's
    presence and frequency penalties over the answer; each for the rows that have them (on a copy made
    :func:`~hllama.engine.sampling.finite` first)."""
    scores = finite(logits)
    for row, sampler in enumerate(samplers):
        if sampler.constraint is not None:  # first, as vLLM does: penalties then weigh only what may come
            sampler.constraint.mask(scores[row])
        if sampler.penalises:
            sampler.penalise(scores[row])
    return scores


def _sample(scores: torch.Tensor, rows: list[int], samplers: Sequence[RowSampler]) -> torch.Tensor:
    """Tokens for the sampling ``rows``: temperature, the truncations, then each row's own race."""
    chosen = torch.empty(len(rows), dtype=torch.long, device=scores.device)
    whole = [at for at, row in enumerate(rows) if not samplers[row].truncates]
    if whole:  # plain sampling: every token races
        settings = [samplers[rows[at]] for at in whole]
        part = scores.index_select(0, _index([rows[at] for at in whole], scores))
        tempered = part / torch.tensor([sampler.temperature for sampler in settings], device=scores.device)[:, None]
        every = torch.arange(part.shape[-1], device=scores.device).expand(len(whole), -1)
        chosen[_index(whole, scores)] = (tempered - _noise(settings, every).log()).argmax(dim=-1)
    truncated = [at for at, row in enumerate(rows) if samplers[row].truncates]
    if truncated:
        settings = [samplers[rows[at]] for at in truncated]
        part = scores.index_select(0, _index([rows[at] for at in truncated], scores))
        chosen[_index(truncated, scores)] = _truncated_race(part, settings)
    return chosen


def _truncated_race(scores: torch.Tensor, samplers: list[RowSampler]) -> torch.Tensor:
    """The race among the tokens top_k, top_p and min_p keep, found among each row's likeliest candidates."""
    vocab = scores.shape[-1]
    width = max(sampler.top_k for sampler in samplers)
    if not all(sampler.top_k for sampler in samplers):
        width = max(width, CANDIDATES)
    width = min(width, vocab)
    temperature = torch.tensor([sampler.temperature for sampler in samplers], device=scores.device)[:, None]
    values, indices = scores.topk(width, dim=-1)  # a temperature changes no order: divide only what is kept
    tempered = values / temperature
    needs_whole = not all(sampler.top_k for sampler in samplers)
    whole = (scores / temperature).logsumexp(dim=-1) if needs_whole else None
    keep, exact = _kept(tempered, samplers, whole, vocab=vocab)
    race = (tempered - _noise(samplers, indices).log()).masked_fill(~keep, float("-inf"))
    chosen = indices.gather(1, race.argmax(dim=-1, keepdim=True)).squeeze(1)
    for row in (~exact).nonzero().flatten().tolist():  # its kept tokens reach past the candidates
        one = samplers[row:row + 1]
        tempered_row = scores[row:row + 1] / one[0].temperature
        every = torch.arange(vocab, device=scores.device)[None, :]
        whole_race = (tempered_row - _noise(one, every).log()).masked_fill(~kept(tempered_row, one), float("-inf"))
        chosen[row] = whole_race.argmax()
    return chosen


def kept(scores: torch.Tensor, samplers: Sequence[RowSampler]) -> torch.Tensor:
    """``[rows, vocab]``: the tokens each row's top_k, top_p and min_p keep of ``scores`` (already divided by
    the temperature), over the whole vocabulary."""
    values, indices = scores.sort(dim=-1, descending=True)
    keep, _ = _kept(values, list(samplers), scores.logsumexp(dim=-1), vocab=scores.shape[-1])
    return torch.zeros_like(keep).scatter_(1, indices, keep)


def _kept(values: torch.Tensor, samplers: list[RowSampler], normaliser: torch.Tensor | None, *, vocab: int
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Which of the sorted candidates ``values`` each row keeps, and whether that is exact (every kept token of
    the whole vocabulary is among the candidates). ``normaliser``: each row's log-sum-exp over the whole
    vocabulary, which the probabilities of a row without top_k need (None when every row has top_k)."""
    device = values.device
    width = values.shape[-1]
    position = torch.arange(width, device=device)[None, :]
    top_k = torch.tensor([sampler.top_k or width for sampler in samplers], device=device)[:, None]
    keep = position < top_k
    has_top_k = torch.tensor([bool(sampler.top_k) for sampler in samplers], device=device)
    # probabilities: after top_k, renormalised over the k kept; without it, over the whole vocabulary
    within = values.masked_fill(~keep, float("-inf")).logsumexp(dim=-1)
    total = within if normaliser is None else torch.where(has_top_k, within, normaliser)
    probabilities = (values - total[:, None]).exp().masked_fill(~keep, 0.0)
    top_p = torch.tensor([sampler.top_p if sampler.top_p < 1.0 else math.inf for sampler in samplers],
                         device=device)[:, None]
    before = probabilities.cumsum(dim=-1) - probabilities  # the mass of likelier tokens
    keep &= before < top_p
    log_min_p = torch.tensor([math.log(sampler.min_p) if sampler.min_p else -math.inf for sampler in samplers],
                             device=device)[:, None]
    keep &= values - values[:, :1] >= log_min_p
    keep[:, 0] = True  # every warper keeps at least one token
    exact = has_top_k | ~keep[:, -1] | (width >= vocab)
    return keep, exact


def _noise(samplers: Sequence[RowSampler], tokens: torch.Tensor) -> torch.Tensor:
    keys = torch.tensor([sampler.key for sampler in samplers], dtype=torch.long, device=tokens.device)[:, None]
    return exponential(keys, tokens)
