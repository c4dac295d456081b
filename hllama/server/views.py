"""How models look on the wire: names, digests and ``/api/tags`` rows."""

from __future__ import annotations

import hashlib

from hllama.aliases.registry import Registry
from hllama.models import hub
from hllama.runtime.catalog import Row
from hllama.runtime.modelinfo import details
from hllama.server.ollama_types import ListedModel


def wire_name(name: str) -> str:
    """Ollama's names carry a tag; ``:latest`` when the name has none."""
    return name if ":" in name else f"{name}:latest"


def digest(text: str) -> str:
    """64 hex characters, without the ``sha256:`` prefix, as in ``/api/tags``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_digest(registry: Registry, name: str) -> str:
    """The ``digest`` of a model as ``/api/tags`` and ``/api/ps`` both give it: an alias's is its modelfile's, a
    cached model's its snapshot's."""
    entry = registry.get(name)
    if entry is not None:
        return digest(entry.digest)
    return digest(f"{name}@{hub.local_snapshot(name)}")


def tag_entry(row: Row, *, modified_at: str, registry: Registry) -> ListedModel:
    name = wire_name(row.name)
    return ListedModel(name=name, model=name, modified_at=modified_at, size=row.size or 0,
                       digest=model_digest(registry, row.name), details=details(row.plan))
