"""How a load is going, told by whoever loads (the engine, a managed vLLM) and read by whoever shows it.

The runtime's scheduler starts a load with :func:`reporting_to` in the worker thread's context; the loader calls
:func:`report_progress` without knowing who listens, so no layer below imports the one above to say how it goes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol


class Listener(Protocol):
    """Anything with a ``status`` to set (the scheduler's record of a model on its way in)."""

    status: str


_listener: ContextVar[Listener | None] = ContextVar("hllama_progress", default=None)

#: A status longer than this is cut (a loader's message is shown on one line of ``/api/ps``).
MAX_STATUS = 500


def report_progress(status: str) -> None:
    """For a loader, in the thread it runs in: how loading goes (nothing happens when nobody listens)."""
    if (listener := _listener.get()) is not None:
        listener.status = status[:MAX_STATUS]


@contextmanager
def reporting_to(listener: Listener) -> Iterator[None]:
    """Within this block (and the threads started from its context), :func:`report_progress` tells ``listener``."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)
