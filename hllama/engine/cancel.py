"""Cancelling inside a forward pass: a long prompt is read in one pass that a cancel can still stop.

Generation stops between tokens by itself (a stopping criterion), but reading a long prompt is one
forward pass that may take seconds on a CPU. Every decoder layer of a loaded model gets a pre-hook
that checks the cancel event of the generation running on the current thread, so a client that
leaves (or a server that stops) ends the pass at the next layer. Splitting the prompt into chunks
would do the same at a cost: later chunks attend through an explicit mask, and on a GPU each pass is
launch-bound; measured, 2 to 14 times one pass on an H200 and 1.15 to 1.35 times on a 2-core CPU.
The hook costs a thread-local lookup per layer (within noise of none: bench/prefill.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_current = threading.local()


class PassAbandoned(Exception):
    """Raised inside a model's forward pass whose generation was cancelled."""


@contextmanager
def cancellable(cancel: threading.Event) -> Iterator[None]:
    """Forward passes this thread runs meanwhile stop at the next layer once ``cancel`` is set."""
    _current.cancel = cancel
    try:
        yield
    finally:
        _current.cancel = None


def make_cancellable(model: Any) -> list[Any]:
    """Hook each decoder layer of ``model`` (found as the module list as long as its layer count); returns the
    hooks' handles (none for a model whose layers are not found: it still stops between tokens)."""
    import torch

    config = getattr(model.config, "text_config", None) or model.config
    layers = getattr(config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and layers and len(module) == layers:
            return [layer.register_forward_pre_hook(_abandon_if_cancelled) for layer in module]
    return []


def _abandon_if_cancelled(module: Any, args: Any) -> None:
    cancel = getattr(_current, "cancel", None)
    if cancel is not None and cancel.is_set():
        raise PassAbandoned
