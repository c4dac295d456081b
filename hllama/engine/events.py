"""What generation hands back: its statistics, each token's log-probability, and the finished answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DoneReason = Literal["stop", "length", "cancel"]


@dataclass(frozen=True)
class Stats:
    prompt_tokens: int
    generated_tokens: int
    prompt_eval_ns: int  # until the first new token
    eval_ns: int  # from the first new token to the end
    total_ns: int
    done_reason: DoneReason
    cached_tokens: int = 0  # of the prompt, taken from an earlier turn's KV cache rather than read again

    @property
    def evaluated_tokens(self) -> int:
        """The prompt tokens the model read, not taken from a cache (Anthropic's ``input_tokens``; Ollama's
        ``prompt_eval_count`` is all of them, with the cached part as ``prompt_eval_cached_count``)."""
        return self.prompt_tokens - self.cached_tokens


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token and how likely the model found it (natural log), with its likeliest rivals."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Finished:
    text: str  # the whole answer, cut before any stop string
    stats: Stats
    generated_ids: list[int]
    logprobs: tuple[TokenLogprob, ...] = ()  # when asked for: one per token of the answer (end token excluded)
    stop_sequence: str | None = None  # the stop string that ended it, if one did


#: What a :class:`Generation` hands its sink last.
END = object()
