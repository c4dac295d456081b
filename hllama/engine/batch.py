"""Batched decoding: the requests to one model share one forward pass per step.

A request joins at a step boundary: its prompt is read into a cache of its own (after the cache an
earlier turn left, if one shares its start), in chunks while other rows decode so their streams never
stall for long, and its first token is chosen; short new prompts that arrived together are read in
one left-padded pass. The new cache is then merged into the batch's, left-padded to a common length;
a 2-D attention mask hides the padding and explicit position ids keep every row's positions its own.
Each step feeds every row its last token and :func:`~hllama.engine.picking.pick` chooses each row's
next one with that row's own settings and seed. A row that finishes or is cancelled leaves at the
next step boundary; its cache goes to the prefix store for the conversation's next turn, and columns
that are only padding are dropped.

One loop per model runs on the model's own thread pool while there is work and ends when there is
none. Models whose cache cannot be merged this way (sliding windows, recurrent or hybrid layers,
encoder-decoders) keep ``generate``: see :func:`batchable`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hllama.engine.cancel import PassAbandoned, cancellable

if TYPE_CHECKING:
    import torch

    from hllama.engine.loaded import LoadedModel
    from hllama.engine.picking import RowSampler
    from hllama.engine.streamer import Streamer

log = logging.getLogger(__name__)

#: Prompt tokens read per pass while other rows are decoding (they wait for each pass): on a CPU a pass
#: of 128 tokens of a 135M model takes ~0.3 s; a GPU reads thousands in that time.
CHUNK = {"cpu": 128, "cuda": 2048}

#: Short prompts that arrive together are read in one pass of at most this many chunks' worth of (padded)
#: tokens: one pass costs far less than one per prompt, and none of them waits for the others' turns.
GROUPED = 4


def batchable(model: Any) -> bool:
    """Whether ``model``'s KV cache is plain full attention in every layer, which rows can be merged into and
    dropped from, and its forward takes the arguments a batched step passes."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        return False
    if not {"attention_mask", "position_ids", "logits_to_keep"} <= _forward_parameters(type(model)):
        return False
    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # a config the cache cannot read: keep generate
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


@functools.cache
def _forward_parameters(model_class: type) -> frozenset[str]:
    return frozenset(inspect.signature(model_class.forward).parameters)


@functools.cache
def cache_keyword(model_class: type) -> str:
    """What a model class calls its KV cache argument: ``cache`` since transformers 5.24, ``past_key_values``
    before."""
    return "cache" if "cache" in _forward_parameters(model_class) else "past_key_values"


@dataclass(eq=False)
class Row:
    """One request in the batch: what it reads, how it chooses tokens, where they go, when it ends."""

    prompt_ids: list[int]
    limit: int  # new tokens at most
    sampler: RowSampler
    worker: Streamer  # decodes, matches stop strings, records logprobs, hands pieces to the request's sink
    cancel: threading.Event
    logprobs: bool = False
    ended: threading.Event = field(default_factory=threading.Event)
    cache: Any = None  # its own, while its prompt is read
    read: int = 0  # prompt tokens in that cache so far
    answered: int = 0  # answer tokens already at the end of ``prompt_ids`` (it goes on after a shift)
    follow: Callable[[], bool] | None = None  # at its end: whether the answer goes on in another row

    def accept(self, token: int, logprob_row: torch.Tensor | None) -> bool:
        """Hand over the row's new token; True when the row is finished."""
        self.sampler.accept(token)
        worker = self.worker
        worker.accept(token, logprob_row)
        return worker.saw_eos or worker.matcher.stopped or len(worker.ids) >= self.limit or self.cancel.is_set()

    def end(self, error: BaseException | None = None) -> None:
        if error is None and self.follow is not None and not self.cancel.is_set() and self.follow():
            return  # the answer goes on after a shorter prompt, in a row that shares ``ended``
        try:
            self.worker.finish(error)
        finally:
            self.ended.set()


class BatchEngine:
    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.executor = loaded.executor
        self.chunk = CHUNK["cuda" if self.model.device.type == "cuda" else "cpu"]
        self._cache_keyword = cache_keyword(type(self.model))
        self._lock = threading.Lock()
        self._incoming: deque[Row] = deque()
        self._looping = False
        self.widest = 0  # the most rows that have shared a step
        # the loop's own state, touched only on its thread
        self.rows: list[Row] = []
        self._filling: Row | None = None
        self._cache: Any = None  # the batch's KV cache: [rows, heads, columns, dim] per layer
        self._mask: torch.Tensor | None = None  # [rows, columns]: 1 for a real token, 0 for padding
        self._lengths: torch.Tensor | None = None  # [rows]: real tokens in the cache (the next position)
        self._pending: torch.Tensor | None = None  # [rows]: each row's last token, not yet in the cache

    def cache_bytes(self) -> int:
        """The bytes of the batch's KV cache now (the rows decoding, and a prompt being read)."""
        from hllama.engine.prefix import cache_bytes

        filling = self._filling
        return cache_bytes(self._cache) + (cache_bytes(filling.cache) if filling is not None else 0)

    def submit(self, row: Row) -> None:
        with self._lock:
            self._incoming.append(row)
            if not self._looping:
                self._looping = True
                self.executor.submit(self._loop)

    def _loop(self) -> None:
        import torch

        try:
            with torch.inference_mode():
                while True:
                    with self._lock:
                        if self._filling is None and not self._incoming and not self.rows:
                            self._looping = False
                            return
                    if self._filling is None and self._incoming:  # only this thread takes from it
                        self._admit()
                    if self._filling is not None:
                        self._read_prompt(self._filling)
                    self._drop_cancelled()
                    if self.rows:
                        self._step()
        except BaseException as exc:  # never leave a request waiting on a loop that died
            log.exception("batch loop failed")
            with self._lock:
                self._looping = False
                orphans = [*self.rows, *([self._filling] if self._filling else []), *self._incoming]
                self._incoming.clear()
            self._reset()
            for row in orphans:
                row.end(exc)

    def _admit(self) -> None:
        """Take the next waiting request; short new prompts that arrived together are read in one pass."""
        with self._lock:
            group = [self._incoming.popleft()]
            width = len(group[0].prompt_ids)
            while (self._incoming and self._groupable(group[0]) and self._groupable(self._incoming[0])
                   and max(width, len(self._incoming[0].prompt_ids)) * (len(group) + 1) <= self.chunk * GROUPED):
                width = max(width, len(self._incoming[0].prompt_ids))
                group.append(self._incoming.popleft())
        if len(group) == 1:
            self._filling = group[0]
        else:
            self._read_together(group)

    def _groupable(self, row: Row) -> bool:
        """A prompt read whole in one short pass, which no earlier turn's cache would spare more than half of
        (a template's first tokens are shared by every conversation)."""
        return (row.cache is None and len(row.prompt_ids) <= self.chunk and not row.cancel.is_set()
                and self.loaded.prefixes.shares(row.prompt_ids) * 2 < len(row.prompt_ids))

    def _read_together(self, rows: list[Row]) -> None:
        """Read several prompts in one pass, left-padded to a common length, and let them all join."""
        import torch
        from transformers import DynamicCache


        device = self.model.device
        width = max(len(row.prompt_ids) for row in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        positions = torch.zeros_like(ids)
        for at, row in enumerate(rows):
            length = len(row.prompt_ids)
            ids[at, width - length:] = torch.tensor(row.prompt_ids, device=device)
            mask[at, width - length:] = 1
            positions[at, width - length:] = torch.arange(length, device=device)
        cache = DynamicCache(config=self.model.config)
        try:
            output = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                                logits_to_keep=1, **{self._cache_keyword: cache})
        except Exception:  # one bad prompt fails alone: read each by itself
            with self._lock:
                self._incoming.extendleft(reversed(rows))
                self._filling = self._incoming.popleft()
            return
        tokens, finished = self._choose(output.logits[:, -1, :], rows)
        first = len(self.rows)
        self._join(rows, cache, mask, tokens)
        if finished:
            self._remove([first + at for at in finished])

    def _read_prompt(self, row: Row) -> None:
        """Read the next part of ``row``'s prompt (all of it when no other row waits); after the last part,
        choose its first token and let it join the batch."""
        import torch

        model = self.model
        try:
            if row.cancel.is_set():
                raise PassAbandoned
            prompt = row.prompt_ids
            if row.cache is None:
                from transformers import DynamicCache

                row.cache, row.worker.reused = self.loaded.prefixes.take(prompt)
                if row.cache is None:
                    row.cache = DynamicCache(config=model.config)
                row.read = row.worker.reused
            end = len(prompt) if not self.rows else min(len(prompt), row.read + self.chunk)
            ids = torch.tensor([prompt[row.read:end]], device=model.device)
            with cancellable(row.cancel):  # a cancel stops even a long pass at the next layer
                output = model(input_ids=ids, attention_mask=torch.ones(1, end, dtype=torch.long, device=model.device),
                               position_ids=torch.arange(row.read, end, device=model.device)[None, :],
                               use_cache=True, logits_to_keep=1, **{self._cache_keyword: row.cache})
            row.read = end
            if end < len(prompt):
                return
            self._filling = None
            (token,), finished = self._choose(output.logits[:, -1, :], [row])
            if finished:
                self._keep(row, row.cache, len(prompt))
                row.end()
                return
        except PassAbandoned:
            self._filling = None
            row.end()
            return
        except Exception as exc:  # this request fails; the others go on
            self._filling = None
            row.end(exc)
            return
        cache, row.cache = row.cache, None
        self._join([row], cache, torch.ones(1, len(row.prompt_ids), dtype=torch.long, device=model.device), [token])

    def _join(self, rows: list[Row], cache: Any, mask: torch.Tensor, tokens: list[int]) -> None:
        """Merge ``rows`` (their ``cache`` and 2-D ``mask``, left-padded alike) into the batch, each with its
        first token waiting to be fed."""
        import torch

        device = mask.device
        lengths = torch.tensor([len(row.prompt_ids) for row in rows], device=device)
        pending = torch.tensor(tokens, device=device)
        if not self.rows:
            self._cache, self._mask, self._lengths, self._pending = cache, mask, lengths, pending
        else:
            assert self._mask is not None and self._lengths is not None and self._pending is not None
            columns = max(self._mask.shape[1], mask.shape[1])
            for batch_layer, new_layer in zip(self._cache.layers, cache.layers, strict=True):
                batch_layer.keys = torch.cat([_pad_left(batch_layer.keys, columns), _pad_left(new_layer.keys, columns)])
                batch_layer.values = torch.cat([_pad_left(batch_layer.values, columns),
                                                _pad_left(new_layer.values, columns)])
            self._mask = torch.cat([_pad_left(self._mask, columns, dim=1), _pad_left(mask, columns, dim=1)])
            self._lengths = torch.cat([self._lengths, lengths])
            self._pending = torch.cat([self._pending, pending])
        self.rows.extend(rows)
        self.widest = max(self.widest, len(self.rows))

    def _step(self) -> None:
        """One token for every row."""
        import torch


        assert self._mask is not None and self._lengths is not None and self._pending is not None
        mask = torch.cat([self._mask, self._mask.new_ones(len(self.rows), 1)], dim=1)
        try:
            output = self.model(input_ids=self._pending[:, None], attention_mask=mask,
                                position_ids=self._lengths[:, None], use_cache=True, logits_to_keep=1,
                                **{self._cache_keyword: self._cache})
        except Exception as exc:  # the whole batch's pass failed: every row ends with the error
            rows, self.rows = self.rows, []
            self._reset()
            for row in rows:
                row.end(exc)
            return
        self._mask = mask
        self._lengths = self._lengths + 1
        tokens, finished = self._choose(output.logits[:, -1, :], self.rows)
        self._pending = torch.tensor(tokens, device=self._pending.device)
        if finished:
            self._remove(finished)

    @staticmethod
    def _choose(logits: torch.Tensor, rows: list[Row]) -> tuple[list[int], list[int]]:
        """Each row's next token from its ``logits`` (``[rows, vocab]``), handed to the row; and which rows (by
        position) are finished."""
        import torch

        from hllama.engine.picking import pick

        logits = logits.float()
        wanted = [at for at, row in enumerate(rows) if row.logprobs]  # before any penalty changes them
        recorded = dict(zip(wanted, torch.log_softmax(logits[wanted], dim=-1), strict=True)) if wanted else {}
        tokens = pick(logits, [row.sampler for row in rows])
        finished = [at for at, (row, token) in enumerate(zip(rows, tokens, strict=True))
                    if row.accept(token, recorded.get(at))]
        return tokens, finished

    def _drop_cancelled(self) -> None:
        cancelled = [at for at, row in enumerate(self.rows) if row.cancel.is_set()]
        if cancelled:
            self._remove(cancelled)

    def _remove(self, leaving: list[int]) -> None:
        import torch

        """Let rows ``leaving`` go: each keeps its cache for a next turn (unless cancelled), then ends."""
        assert self._mask is not None and self._lengths is not None and self._pending is not None
        for at in leaving:
            row = self.rows[at]
            if not row.cancel.is_set():
                self._keep(row, self._row_cache(at), int(self._lengths[at]), staying=len(self.rows) - len(leaving))
            row.end()
        staying = [at for at in range(len(self.rows)) if at not in set(leaving)]
        self.rows = [self.rows[at] for at in staying]
        if not self.rows:
            self._reset()
            return
        index = torch.tensor(staying, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        first = int(mask.any(dim=0).nonzero()[0])  # columns before it are padding in every row left
        self._mask = mask[:, first:]
        for layer in self._cache.layers:
            layer.keys = layer.keys[:, :, first:].index_select(0, index)  # contiguous again, in one copy
            layer.values = layer.values[:, :, first:].index_select(0, index)
        self._lengths = self._lengths.index_select(0, index)
        self._pending = self._pending.index_select(0, index)

    def _row_cache(self, at: int) -> Any:
        """Row ``at``'s part of the batch cache, without its padding, as a cache of its own."""
        from transformers import DynamicCache

        assert self._mask is not None
        start = int(self._mask[at].nonzero()[0])
        cache = DynamicCache(config=self.model.config)
        for index, layer in enumerate(self._cache.layers):
            cache.update(layer.keys[at:at + 1, :, start:].clone(), layer.values[at:at + 1, :, start:].clone(), index)
        return cache

    def _keep(self, row: Row, cache: Any, length: int, *, staying: int | None = None) -> None:
        """An answer that ended by itself leaves its cache for the conversation's next turn, within what the
        rows still running (``staying`` of the batch's; default all) leave of the bound."""
        from hllama.engine.prefix import cache_bytes

        in_use = 0
        if self._cache is not None and self.rows:
            in_use = cache_bytes(self._cache) * (len(self.rows) if staying is None else staying) // len(self.rows)
        self.loaded.prefixes.put([*row.prompt_ids, *row.worker.ids[row.answered:]][:length], cache, in_use=in_use)

    def _reset(self) -> None:
        self.rows = []
        self._cache = self._mask = self._lengths = self._pending = None


def _pad_left(tensor: torch.Tensor, columns: int, *, dim: int = -2) -> torch.Tensor:
    import torch

    missing = columns - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
