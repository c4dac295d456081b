"""What a model is, told from its files without loading it: ``/api/show`` and ``hllama show`` both say it.

Ollama's ``details`` and ``model_info`` (GGUF-style keys), from config.json and safetensors headers,
its capabilities from its chat template and tokenizer, and the parameters an alias sets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hllama.aliases.resolve import Layer, Resolved
from hllama.engine import folder_can_infill, supports_thinking, supports_tools
from hllama.models.footprint import Plan, text_config
from hllama.models.hardware import Budget
from hllama.models.source import is_generative, is_vision, locate
from hllama.options import SYNONYMS
from hllama.runtime.catalog import plan_for


@dataclass(frozen=True)
class ModelDescription:
    plan: Plan | None  # None: the model's files are not on this machine
    template: str
    capabilities: list[str]
    parameters: dict[str, Any]  # what is set, under Ollama's names

    @property
    def details(self) -> dict[str, Any]:
        return details(self.plan)

    @property
    def model_info(self) -> dict[str, Any]:
        return model_info(self.plan)


def describe_model(resolved: Resolved, budget: Budget) -> ModelDescription:
    load_plan = plan_for(resolved, budget)
    folder = locate(resolved.model, resolved.revision).folder if load_plan is not None else None
    template = resolved.template or chat_template(folder) or (
        load_plan.footprint.config.get("chat_template", "") if load_plan else "")  # a .gguf carries its own
    return ModelDescription(load_plan, template, capabilities(load_plan, template, folder), set_parameters(resolved))


QUANTIZATION_LEVEL = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "8bit": "INT8", "4bit": "NF4"}


def details(plan: Plan | None) -> dict[str, Any]:
    config = text_config(plan.footprint.config) if plan else {}
    family = str(config.get("model_type") or "")
    return {
        "parent_model": "",
        "format": plan.footprint.format if plan else "",
        "family": family,
        "families": [family] if family else None,
        "parameter_size": parameter_size(plan.footprint.parameters) if plan else "",
        "quantization_level": quantization_level(plan),
    }


def quantization_level(plan: Plan | None) -> str:
    """A GGUF file's own level (``Q4_1``), as Ollama reports it, though it runs dequantized (empty where its
    header does not say); else the precision it loads at."""
    if plan is None:
        return ""
    if plan.footprint.format == "gguf":
        return plan.footprint.quantization or ""
    return QUANTIZATION_LEVEL.get(plan.chosen.precision, "")


def parameter_size(count: int) -> str:
    """``7241732096`` -> ``7.2B``, Ollama's way."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f}{unit}".replace(".0", "") if count < 100 * size else f"{count / size:.0f}{unit}"
    return str(count)


def model_info(plan: Plan | None) -> dict[str, Any]:
    """GGUF-style keys from config.json (``general.architecture``, ``<arch>.context_length``, ...), and the
    precision the model runs at (``hllama.precision``)."""
    if plan is None:
        return {}
    config: Mapping[str, Any] = text_config(plan.footprint.config)
    arch = str(config.get("model_type") or "unknown")
    info: dict[str, Any] = {"general.architecture": arch, "general.parameter_count": plan.footprint.parameters,
                            "hllama.precision": plan.chosen.precision}  # what it runs at (a GGUF file, dequantized)
    for key, source in (("context_length", "max_position_embeddings"), ("embedding_length", "hidden_size"),
                        ("block_count", "num_hidden_layers"), ("feed_forward_length", "intermediate_size"),
                        ("attention.head_count", "num_attention_heads"),
                        ("attention.head_count_kv", "num_key_value_heads"), ("vocab_size", "vocab_size"),
                        ("rope.freq_base", "rope_theta")):
        if config.get(source) is not None:
            info[f"{arch}.{key}"] = config[source]
    return info


def set_parameters(resolved: Resolved) -> dict[str, Any]:
    """What the alias (or the config) sets, under Ollama's names (``num_ctx``, ``num_predict``), as Ollama's
    ``parameters`` lists a model's own; built-in defaults are left out."""
    ollama_names = {canonical: synonym for synonym, canonical in SYNONYMS.items()}
    values = resolved.parameters.model_dump(exclude_none=True, exclude={"keep_alive"})
    return {ollama_names.get(key, key): value for key, value in values.items()
            if resolved.sources.get(f"parameters.{key}") not in (None, Layer.DEFAULT)}


def capabilities(load_plan: Any, template: str, folder: Path | None) -> list[str]:
    if load_plan is not None and not is_generative(load_plan.footprint.config):
        return ["embedding"]
    return ["completion", *(["tools"] if supports_tools(template) else []),
            *(["insert"] if folder is not None and folder_can_infill(folder) else []),
            *(["thinking"] if supports_thinking(template) else []),
            *(["vision"] if load_plan is not None and is_vision(load_plan.footprint.config) else [])]


def chat_template(folder: Path | None) -> str:
    if folder is None:
        return ""
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        path = folder / name
        try:
            text = path.read_text(encoding="utf-8") if path.is_file() else None
            if text is not None:
                return text if name.endswith(".jinja") else str(json.loads(text).get("chat_template") or "")
        except (OSError, ValueError, AttributeError):  # unreadable or not a config: no template to show
            return ""
    return ""
