"""Choosing every row's next token in one pass: per-request settings, seeds and history; shared tensor math.

Each request keeps its own :class:`RowSampler`: its settings, its own ``torch.Generator`` and the token
history its penalties read. :func:`pick` applies them to all rows of a step at once: penalties as masks
over the stacked rows, greedy rows by one ``argmax``, sampling rows by one ``topk`` over the rows'
candidates. The draw is an exponential race (``argmax p / q`` with ``q ~ Exp(1)`` from the row's own
generator, one per vocabulary entry per step): its outcome depends only on the kept tokens and their
probabilities, never on the order they were found in or on the other rows, so a seed gives the same
answer alone and in a batch (exactly in float32).

The chain is the one :func:`hllama.engine.sampling.logits_processors` builds for ``generate``, in its
order: repetition penalty, presence and frequency penalties, then (temperature above
:data:`GREEDY_BELOW`) temperature, top_k, top_p, min_p and the draw.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence

import torch

from hllama.engine.sampling import GREEDY_BELOW
from hllama.options import Parameters

#: How many candidates a row without top_k is looked for among before its whole vocabulary is (top_p and
#: min_p almost always keep far fewer; when they do not, that row is done over the whole vocabulary).
CANDIDATES = 1024


class RowSampler:
    """One request's way of choosing tokens, and the history it needs (only what its penalties read)."""

    def __init__(self, params: Parameters, prompt_ids: Sequence[int], *, vocab_size: int,
                 device: torch.device | str = "cpu") -> None:
        temperature = params.temperature if params.temperature is not None else 1.0
        self.greedy = temperature < GREEDY_BELOW
        self.temperature = temperature
        self.top_k = params.top_k if params.top_k and params.top_k < vocab_size else 0
        self.top_p = params.top_p if params.top_p is not None and params.top_p < 1.0 else 1.0
        self.min_p = params.min_p or 0.0
        self.repetition = params.repetition_penalty if params.repetition_penalty not in (None, 1.0) else None
        self.presence = params.presence_penalty or 0.0
        self.frequency = params.frequency_penalty or 0.0
        self.seed = params.seed % 2**64 if params.seed not in (None, -1) else secrets.randbits(63)
        self.device = torch.device(device)
        self.vocab_size = vocab_size
        self._generator: torch.Generator | None = None
        self.seen: torch.Tensor | None = None  # every token of prompt and answer: the repetition penalty's
        if self.repetition is not None:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=self.device)
            self.seen[torch.tensor([i for i in prompt_ids if 0 <= i < vocab_size], dtype=torch.long,
                                   device=self.device)] = True
        self.counts: torch.Tensor | None = None  # the answer's tokens: presence and frequency penalties'
        if self.presence or self.frequency:
            self.counts = torch.zeros(vocab_size, dtype=torch.float32, device=self.device)

    @property
    def truncates(self) -> bool:
        return bool(self.top_k or self.top_p < 1.0 or self.min_p)

    def accept(self, token: int) -> None:
        """The row's new token joins the history its penalties read."""
        if not 0 <= token < self.vocab_size:
            return
        if self.seen is not None:
            self.seen[token] = True
        if self.counts is not None:
            self.counts[token] += 1

    def exponentials(self) -> torch.Tensor:
        """This step's race times, one per vocabulary entry, from the row's own generator."""
        if self._generator is None:
            self._generator = torch.Generator(device=self.device).manual_seed(self.seed)
        return torch.empty(self.vocab_size, device=self.device).exponential_(generator=self._generator)


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
    """transformers' repetition penalty over prompt and answer; OpenAI's presence and frequency penalties over
    the answer, for the rows that have them. Scores an extreme penalty pushed to +inf (or NaN) would make every
    probability NaN: the tokens at +inf share the draw, and NaN counts as excluded."""
    scores = torch.nan_to_num(logits, nan=float("-inf"), posinf=torch.finfo(logits.dtype).max)
    rows = [row for row, sampler in enumerate(samplers) if sampler.seen is not None]
    if rows:
        index = _index(rows, scores)
        penalty = torch.tensor([samplers[row].repetition for row in rows], device=scores.device)[:, None]
        seen = torch.stack([samplers[row].seen for row in rows])  # type: ignore[misc]
        part = scores.index_select(0, index)
        penalised = torch.where(part < 0, part * penalty, part / penalty)
        scores[index] = torch.where(seen, penalised, part)
    rows = [row for row, sampler in enumerate(samplers) if sampler.counts is not None]
    if rows:
        index = _index(rows, scores)
        counts = torch.stack([samplers[row].counts for row in rows])  # type: ignore[misc]
        frequency = torch.tensor([samplers[row].frequency for row in rows], device=scores.device)[:, None]
        presence = torch.tensor([samplers[row].presence for row in rows], device=scores.device)[:, None]
        scores[index] = scores.index_select(0, index) - frequency * counts - presence * (counts > 0).float()
    return scores


def _sample(scores: torch.Tensor, rows: list[int], samplers: Sequence[RowSampler]) -> torch.Tensor:
    """Tokens for the sampling ``rows``: temperature, the truncations, then each row's own race."""
    part = scores.index_select(0, _index(rows, scores))
    part /= torch.tensor([samplers[row].temperature for row in rows], device=scores.device)[:, None]
    noise = torch.stack([samplers[row].exponentials() for row in rows])
    race = part - noise.log()  # argmax of p / q, in logs: the softmax's normaliser cannot change the winner
    chosen = race.argmax(dim=-1)
    truncated = [at for at, row in enumerate(rows) if samplers[row].truncates]
    if truncated:
        at = _index(truncated, scores)
        settings = [samplers[rows[i]] for i in truncated]
        chosen[at] = _truncated_race(part.index_select(0, at), race.index_select(0, at), settings)
    return chosen


def _truncated_race(scores: torch.Tensor, race: torch.Tensor, samplers: list[RowSampler]) -> torch.Tensor:
    """The race among the tokens top_k, top_p and min_p keep, found among each row's likeliest candidates."""
    vocab = scores.shape[-1]
    every_row_top_k = all(sampler.top_k for sampler in samplers)
    width = max(sampler.top_k for sampler in samplers)
    if not every_row_top_k:
        width = max(width, CANDIDATES)
    width = min(width, vocab)
    values, indices = scores.topk(width, dim=-1)
    keep, exact = _kept(scores, values, samplers)
    candidates = race.gather(1, indices).masked_fill(~keep, float("-inf"))
    chosen = indices.gather(1, candidates.argmax(dim=-1, keepdim=True)).squeeze(1)
    for row in (~exact).nonzero().flatten().tolist():  # its kept tokens reach past the candidates
        keep_all = kept(scores[row:row + 1], samplers[row:row + 1])
        chosen[row] = race[row:row + 1].masked_fill(~keep_all, float("-inf")).argmax()
    return chosen


def kept(scores: torch.Tensor, samplers: Sequence[RowSampler]) -> torch.Tensor:
    """``[rows, vocab]``: the tokens each row's top_k, top_p and min_p keep of ``scores`` (already divided by
    the temperature), over the whole vocabulary."""
    values, indices = scores.sort(dim=-1, descending=True)
    keep, _ = _kept(scores, values, list(samplers))
    return torch.zeros_like(keep).scatter_(1, indices, keep)


def _kept(scores: torch.Tensor, values: torch.Tensor, samplers: list[RowSampler]
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Which of the sorted candidates ``values`` each row keeps, and whether that is exact (every kept token of
    the whole vocabulary is among the candidates)."""
    device = values.device
    width = values.shape[-1]
    position = torch.arange(width, device=device)[None, :]
    top_k = torch.tensor([sampler.top_k or width for sampler in samplers], device=device)[:, None]
    keep = position < top_k
    has_top_k = torch.tensor([bool(sampler.top_k) for sampler in samplers], device=device)
    # probabilities: after top_k, renormalised over the k kept; without it, over the whole vocabulary
    normaliser = torch.where(has_top_k, values.masked_fill(~keep, float("-inf")).logsumexp(dim=-1),
                             scores.logsumexp(dim=-1))
    probabilities = (values - normaliser[:, None]).exp().masked_fill(~keep, 0.0)
    top_p = torch.tensor([sampler.top_p if sampler.top_p < 1.0 else math.inf for sampler in samplers],
                         device=device)[:, None]
    before = probabilities.cumsum(dim=-1) - probabilities  # the mass of likelier tokens
    keep &= before < top_p
    log_min_p = torch.tensor([math.log(sampler.min_p) if sampler.min_p else -math.inf for sampler in samplers],
                             device=device)[:, None]
    keep &= values - values[:, :1] >= log_min_p
    keep[:, 0] = True  # every warper keeps at least one token
    exact = has_top_k | ~keep[:, -1] | (width == scores.shape[-1])
    return keep, exact
