"""Noticing a client that leaves while a long piece of work it asked for runs (in a thread) without streaming."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

from fastapi import Request

#: How often the connection is looked at, in seconds.
_EVERY = 0.2


@contextlib.asynccontextmanager
async def watched(request: Request) -> AsyncIterator[threading.Event]:
    """An event set once the client of ``request`` has gone, while the block runs: work that checks it between
    steps stops there rather than computing what nobody will read."""
    gone = threading.Event()

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(_EVERY)
        gone.set()

    watcher = asyncio.create_task(watch())
    try:
        yield gone
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
