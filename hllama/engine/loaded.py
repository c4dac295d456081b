"""A model in memory: its weights, tokenizer and caches, and what the scheduler and requests need to know of it."""

from __future__ import annotations

import gc
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from hllama.engine.embed import Pooling
from hllama.engine.prefix import PrefixCache
from hllama.models.footprint import Plan
from hllama.models.source import ModelSource
from hllama.options import LoadOptions


class Batcher(Protocol):
    """What a loaded model knows of its batching engine (:class:`~hllama.engine.batch.BatchEngine`)."""

    rows: list[Any]  # the requests it decodes together now

    def submit(self, row: Any) -> None: ...

    def cache_bytes(self) -> int: ...


@dataclass
class LoadedModel:
    model_id: str
    revision: str | None
    load: LoadOptions
    source: ModelSource
    plan: Plan
    model: Any
    tokenizer: Any
    memory_bytes: int
    load_duration_ns: int
    context_length: int | None
    generates: bool = True  # False: an embedding model (an encoder), which only embeds
    pooling: Pooling = "mean"  # how its hidden states become one embedding
    cancel_hooks: list[Any] = field(default_factory=list)  # removable: a cancel stops a forward pass at a layer
    prefixes: PrefixCache = field(default_factory=lambda: PrefixCache(0))  # earlier turns' KV caches
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=8, thread_name_prefix="hllama-generate"))
    batcher: Batcher | None = None  # None: each request runs its own ``generate`` (see batch.batchable)
    grammar_tokenizer: Any = None  # the tokenizer as structured output's grammars see it (None: cannot be had)
    processor: Any = None  # a vision model's processor (images and text into its inputs); None: text only

    @property
    def precision(self) -> str:
        return self.plan.chosen.precision

    def context_for(self, requested: int | None) -> int | None:
        """The context a request runs in: its ``ctx`` (``num_ctx``), never past the model's own, which a
        request that sets none gets. A larger window would only run the model past what it was trained on."""
        if self.context_length is None:
            return requested
        return min(requested, self.context_length) if requested else self.context_length

    @property
    def reserved_bytes(self) -> int:
        """What the scheduler counts against the budget: the planned total, KV cache and overhead included, with
        the weights as measured once loaded where they took more than planned (an estimate from file sizes)."""
        chosen = self.plan.chosen
        return chosen.total + max(0, self.memory_bytes - chosen.weights)

    @property
    def resident_bytes(self) -> int:
        """What the model holds now, measured: its weights and buffers, and the KV caches kept or in use."""
        return self.memory_bytes + self.prefixes.bytes + (self.batcher.cache_bytes() if self.batcher else 0)

    def close(self) -> None:
        """Drop the weights and caches now rather than at the next garbage collection, and give the memory back
        to the system (a long-running server would otherwise stay at its peak after every unload)."""
        import torch

        self.executor.shutdown(wait=True, cancel_futures=True)
        self.prefixes.clear()
        self.model = self.tokenizer = self.processor = self.batcher = self.grammar_tokenizer = None
        self.cancel_hooks.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return_freed_memory()


def return_freed_memory() -> None:
    """Hand the pages of freed blocks back to the system. glibc keeps what a process frees for its next
    allocations, so without this the resident size after an unload stays what it was while the model was loaded."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return
    if trim is not None:
        trim(0)
