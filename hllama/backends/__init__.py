"""Backends: what serves an alias once it is loaded, behind one protocol (:mod:`~hllama.backends.base`): the local
engine, engines already running elsewhere, or a vLLM server hllama starts; :mod:`~hllama.backends.choose` picks."""

from hllama.backends.base import Backend, Chat, Completion, Description, Done, Event, Prompted
from hllama.backends.choose import Backends, is_upstream

__all__ = ["Backend", "Backends", "Chat", "Completion", "Description", "Done", "Event", "Prompted",
           "is_upstream"]
