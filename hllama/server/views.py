"""How models look on the wire: names, digests, ``/api/tags`` rows and log-probabilities."""

from __future__ import annotations

import hashlib
from typing import Any

from hllama.aliases.registry import Registry
from hllama.models import hub
from hllama.runtime.catalog import Row
from hllama.runtime.modelinfo import details


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


def tag_entry(row: Row, *, modified_at: str, registry: Registry) -> dict[str, Any]:
    name = wire_name(row.name)
    return {"name": name, "model": name, "modified_at": modified_at, "size": row.size or 0,
            "digest": model_digest(registry, row.name), "details": details(row.plan)}


def logprob_entries(logprobs: Any) -> list[dict[str, Any]]:
    """Each token with its log-probability, UTF-8 bytes and likeliest alternatives (Ollama's and OpenAI's shape)."""
    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return [{**entry(item.token, item.logprob), "top_logprobs": [entry(token, value) for token, value in item.top]}
            for item in logprobs]
