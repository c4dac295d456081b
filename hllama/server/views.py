"""How models look on the wire: Ollama's ``details``, ``model_info``, digests and sizes.

Built from what is on disk (config.json, safetensors headers, the modelfile), never by loading.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from hllama.catalog import Row
from hllama.footprint import Plan, text_config

QUANTIZATION_LEVEL = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "8bit": "INT8", "4bit": "NF4"}


def wire_name(name: str) -> str:
    """Ollama's names carry a tag; ``:latest`` when the name has none."""
    return name if ":" in name else f"{name}:latest"


def digest(text: str) -> str:
    """64 hex characters, without the ``sha256:`` prefix, as in ``/api/tags``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def details(plan: Plan | None) -> dict[str, Any]:
    config = text_config(plan.footprint.config) if plan else {}
    family = str(config.get("model_type") or "")
    return {
        "parent_model": "",
        "format": plan.footprint.format if plan else "",
        "family": family,
        "families": [family] if family else None,
        "parameter_size": parameter_size(plan.footprint.parameters) if plan else "",
        "quantization_level": QUANTIZATION_LEVEL.get(plan.chosen.precision, "") if plan else "",
    }


def parameter_size(count: int) -> str:
    """``7241732096`` -> ``7.2B``, Ollama's way."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f}{unit}".replace(".0", "") if count < 100 * size else f"{count / size:.0f}{unit}"
    return str(count)


def model_info(plan: Plan | None) -> dict[str, Any]:
    """GGUF-style keys from config.json (``general.architecture``, ``<arch>.context_length``, ...)."""
    if plan is None:
        return {}
    config: Mapping[str, Any] = text_config(plan.footprint.config)
    arch = str(config.get("model_type") or "unknown")
    info: dict[str, Any] = {"general.architecture": arch, "general.parameter_count": plan.footprint.parameters}
    for key, source in (("context_length", "max_position_embeddings"), ("embedding_length", "hidden_size"),
                        ("block_count", "num_hidden_layers"), ("feed_forward_length", "intermediate_size"),
                        ("attention.head_count", "num_attention_heads"),
                        ("attention.head_count_kv", "num_key_value_heads"), ("vocab_size", "vocab_size"),
                        ("rope.freq_base", "rope_theta")):
        if config.get(source) is not None:
            info[f"{arch}.{key}"] = config[source]
    return info


def tag_entry(row: Row, *, modified_at: str, digest_text: str) -> dict[str, Any]:
    name = wire_name(row.name)
    return {"name": name, "model": name, "modified_at": modified_at, "size": row.size or 0,
            "digest": digest(digest_text), "details": details(row.plan)}


def logprob_entries(logprobs: Any) -> list[dict[str, Any]]:
    """Each token with its log-probability, UTF-8 bytes and likeliest alternatives (Ollama's and OpenAI's shape)."""
    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return [{**entry(item.token, item.logprob), "top_logprobs": [entry(token, value) for token, value in item.top]}
            for item in logprobs]
