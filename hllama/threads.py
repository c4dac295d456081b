"""Between worker threads and the event loop: model work runs in threads so the loop stays free for other requests,
and what it makes reaches the loop in batches, one wake-up per batch rather than one per item."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class LoopSink:
    """Hands items from a generating thread to the event loop, waking it once per batch.

    While the loop is busy, items pile up and are taken together, so a slow consumer costs one
    wake-up per batch rather than one per token.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, on_closed: Callable[[], None] | None = None) -> None:
        self._loop = loop
        self._on_closed = on_closed  # told when the loop is gone (the producer may stop)
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
            if self._on_closed is not None:
                self._on_closed()

    async def take(self) -> list[Any]:
        await self._ready.wait()
        with self._lock:
            items, self._items = self._items, []
            self._wake_pending = False
            self._ready.clear()
        return items


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()


async def iterate_in_thread(make: Callable[[threading.Event], Iterator[T]]) -> AsyncIterator[T]:
    """Iterate a blocking iterator in a thread. Leaving early (a closed client) sets its cancel event."""
    cancel = threading.Event()
    sink = LoopSink(asyncio.get_running_loop(), on_closed=cancel.set)

    def pump() -> None:
        try:
            for item in make(cancel):
                sink(item)
        except BaseException as exc:
            sink(_Failure(exc))
        finally:
            sink(_DONE)

    thread = threading.Thread(target=pump, daemon=True, name="hllama-pump")
    thread.start()
    try:
        while True:
            for item in await sink.take():
                if item is _DONE:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
    finally:
        cancel.set()
        await asyncio.shield(asyncio.to_thread(thread.join))
