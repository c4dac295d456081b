"""The streamer ``generate`` calls token by token: it decodes, watches for stop strings and the end tokens, and
hands each new piece of text on (to a :class:`~hllama.engine.generate.Generation`'s sink)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from hllama.engine.cancel import PassAbandoned, cancellable
from hllama.engine.events import END, TokenLogprob
from hllama.engine.stops import StopMatcher


def vocab_size_of(model: Any) -> int:
    """The width of the model's logits (the output embedding's rows; config.json may say less)."""
    output = model.get_output_embeddings()
    return int(output.weight.shape[0]) if output is not None else int(model.config.vocab_size)


def eos_ids_of(model: Any, tokenizer: Any) -> list[int]:
    """The tokens that end an answer: the generation config's, else the tokenizer's."""
    return id_list(model.generation_config.eos_token_id) or id_list(tokenizer.eos_token_id)


class Streamer:
    """The streamer ``generate`` calls (``put``/``end``), and the thread body that runs it."""

    def __init__(self, tokenizer: Any, matcher: StopMatcher, cancel: threading.Event, eos_ids: list[int],
                 sink: Callable[[Any], None]) -> None:
        self.matcher = matcher
        self.cancel = cancel
        self.sink = sink
        self.ended_at: int | None = None
        self.decoder = _IncrementalDecoder(tokenizer)
        self.eos_ids = set(eos_ids)
        self.ids: list[int] = []
        self.saw_eos = False
        self.first_token_at: int | None = None
        self._prompt_seen = False
        self.recorder: Any = None  # a LogprobRecorder when log-probabilities were asked for
        self.top_logprobs = 0
        self.logprobs: list[TokenLogprob] = []
        self.reused = 0  # prompt tokens taken from an earlier turn's KV cache

    def run(self, answer: Callable[[], None]) -> None:
        """The thread body of the ``generate`` calls that make an answer (models that are not batched)."""
        error: BaseException | None = None
        try:
            with cancellable(self.cancel):  # a long prompt's single pass stops at the next layer too
                answer()
        except PassAbandoned:  # cancelled while the model read the prompt: an answer that ends here
            pass
        except BaseException as exc:  # handed to the consumer, never lost in this thread
            error = exc
        self.finish(error)

    def finish(self, error: BaseException | None = None) -> None:
        """The answer is over: show what a possible stop string held back (or hand over ``error``), then END."""
        try:
            if error is not None:
                self.sink(error)
            elif not self.matcher.stopped and (piece := self.matcher.flush(self.decoder.text)):
                self.sink(piece)
        finally:
            self.ended_at = time.perf_counter_ns()
            self.sink(END)

    def expect_prompt(self) -> None:
        """A ``generate`` call is about to start: the first thing it hands over is its input, not a token."""
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        """The streamer interface ``generate`` calls, once with the prompt, then once per token."""
        if not self._prompt_seen:  # generate first hands over the prompt itself
            self._prompt_seen = True
            return
        latest = self.recorder.latest if self.recorder is not None else None
        self.accept(int(value.reshape(-1)[0]), latest)

    def accept(self, token: int, logprob_row: Any = None) -> None:
        """One new token; ``logprob_row``: the step's log-probabilities, when they were asked for."""
        if self.cancel.is_set():
            return
        self.ids.append(token)
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter_ns()
        if token in self.eos_ids:
            self.saw_eos = True
        elif logprob_row is not None:
            self.logprobs.append(self._logprob(token, logprob_row))
        text = self.decoder.add(token)
        if piece := self.matcher.feed(text.rstrip("\ufffd")):  # an incomplete character waits
            self.sink(piece)

    def end(self) -> None:
        pass

    def _logprob(self, token: int, row: Any) -> TokenLogprob:
        import torch

        def text(ids: int) -> str:
            return self.decoder.tokenizer.decode([ids])

        alternatives: tuple[tuple[str, float], ...] = ()
        if self.top_logprobs:
            best = torch.topk(row, self.top_logprobs)
            alternatives = tuple((text(index), value)
                                 for value, index in zip(best.values.tolist(), best.indices.tolist(), strict=True))
        return TokenLogprob(token=text(token), logprob=float(row[token]), top=alternatives)


class _IncrementalDecoder:
    """All text decoded so far, one token at a time (tokenizers' DecodeStream where available)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._stream = None
        if backend is not None:
            from tokenizers.decoders import DecodeStream

            self._backend = backend
            self._stream = DecodeStream(skip_special_tokens=True)

    def add(self, token: int) -> str:
        if self._stream is not None:
            piece = self._stream.step(self._backend, token)
            if piece:
                self.text += piece
        else:
            self.ids.append(token)
            self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return self.text


def id_list(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
