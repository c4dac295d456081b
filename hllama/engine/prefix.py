"""Prefix reuse: a chat's next turn starts from the KV cache its last turn left, not from its first token.

After an answer, the cache that read its prompt and wrote its tokens is kept under those tokens. A
later prompt that begins with the same tokens (the conversation so far, then a new message) takes it,
cropped to what the two share, and only the rest is read. Several conversations are kept, least
recently used dropped first, within a byte bound (the KV cache the model's memory estimate already
reserves, less what running requests hold). A cache is taken, not shared: a request owns it until it puts it back.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class PrefixCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[int, ...], tuple[Any, int]] = OrderedDict()  # ids -> (cache, bytes)

    @property
    def bytes(self) -> int:
        with self._lock:
            return sum(size for _, size in self._entries.values())

    def shares(self, prompt: list[int]) -> int:
        """How many leading tokens of ``prompt`` the best kept cache holds (without taking it)."""
        with self._lock:
            return max((_common_prefix(ids, prompt) for ids in self._entries), default=0)

    def take(self, prompt: list[int]) -> tuple[Any, int]:
        """The cache sharing the longest prefix with ``prompt``, cropped to it (at least one token is left
        to read), and how many tokens it holds; ``(None, 0)`` when none shares any."""
        with self._lock:
            best, shared = None, 0
            for ids in self._entries:
                common = _common_prefix(ids, prompt)
                if common > shared:
                    best, shared = ids, common
            if best is None:
                return None, 0
            cache, _ = self._entries.pop(best)
        shared = min(shared, len(prompt) - 1)
        if shared <= 0:
            return None, 0
        if (surplus := cache.get_seq_length() - shared) > 0:
            cache.crop(-surplus)  # a negative count removes that many tokens, in every transformers 5
        return cache, shared

    def put(self, ids: list[int], cache: Any, *, in_use: int = 0) -> None:
        """Keep ``cache`` (of the tokens ``ids``), if its kind can be cropped and it fits the bound beside the
        ``in_use`` bytes of KV cache that running requests hold."""
        if cache is None or not reusable(cache):
            return
        size = cache_bytes(cache)
        ids_key = tuple(ids[:cache.get_seq_length()])
        room = self.max_bytes - in_use
        with self._lock:
            self._entries.pop(ids_key, None)
            if size > room:
                return
            self._entries[ids_key] = (cache, size)
            total = sum(size for _, size in self._entries.values())
            while total > room:
                _, (_, dropped) = self._entries.popitem(last=False)  # the least recently used
                total -= dropped

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def reusable(cache: Any) -> bool:
    """A plain dynamic cache whose every layer can be cropped (not a sliding-window, static or hybrid one)."""
    from transformers import DynamicCache

    return type(cache) is DynamicCache and all(getattr(layer, "is_croppable", True) and
                                               not getattr(layer, "is_sliding", False)
                                               for layer in getattr(cache, "layers", ()))


def cache_bytes(cache: Any) -> int:
    return sum(tensor.numel() * tensor.element_size() for layer in getattr(cache, "layers", ())
               for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)) if tensor is not None
               and hasattr(tensor, "numel"))


def _common_prefix(left: tuple[int, ...], right: list[int]) -> int:
    count = 0
    for a, b in zip(left, right, strict=False):
        if a != b:
            break
        count += 1
    return count
