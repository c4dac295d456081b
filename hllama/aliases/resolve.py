"""The layered resolver: one answer to "which settings does this request run with, and why".

Layers, lowest first: built-in defaults < global config < the alias's modelfile < CLI flags <
API options. Each layer is a partial set of values; a value a layer leaves unset (None) never
overrides a lower one. The fold keeps, for every value, the layer that set it.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hllama.aliases.registry import Registry, RegistryEntry
from hllama.config import Settings
from hllama.conversation import Message
from hllama.errors import AliasNotFound, ModelfileError
from hllama.models import hub
from hllama.names import LEGACY_REPO_ID, is_local_path, is_model_path, looks_like_repo_id
from hllama.options import BUILTIN_LOAD, BUILTIN_PARAMETERS, LoadOptions, Parameters


class Layer(str, Enum):
    DEFAULT = "default"
    CONFIG = "config"
    MODELFILE = "modelfile"
    NAME = "name"  # the model was named directly (repo id or path), not through an alias
    CLI = "cli"
    API = "api"


class Overrides(BaseModel):
    """What a front end may set on top of an alias: CLI flags or an API request."""

    model_config = ConfigDict(extra="forbid")

    system: str | None = None
    template: str | None = None
    parameters: Parameters = Field(default_factory=Parameters)
    load: LoadOptions = Field(default_factory=LoadOptions)


class Resolved(BaseModel):
    """Everything needed to load a model and run one request, with the layer of every value."""

    name: str = Field(description="the name asked for")
    alias: str | None = Field(None, description="the alias it named, if any")
    model: str = Field(description="Hub repo id or local path")
    revision: str | None = None
    system: str | None = None
    template: str | None = None
    messages: list[Message] = Field(default_factory=list)
    parameters: Parameters
    load: LoadOptions
    sources: dict[str, Layer] = Field(description="dotted key -> layer that set it")

    def explain(self) -> list[tuple[str, Any, Layer | None]]:
        """Every setting as (key, effective value, layer that set it or None when unset)."""
        flat = _flatten(self.model_dump(include={"model", "revision", "system", "template", "messages"}))
        flat.update(_flatten({"parameters": self.parameters.model_dump()}))
        flat.update(_flatten({"load": self.load.model_dump()}))
        return [(key, value, self.sources.get(key)) for key, value in flat.items()]


def resolve(name: str, *, settings: Settings, registry: Registry, cli: Overrides | None = None,
            api: Overrides | None = None) -> Resolved:
    """Fold every layer for ``name``: an alias, else a Hub repo id or local model path."""
    layers: list[tuple[Layer, dict[str, Any]]] = [
        (Layer.DEFAULT, _values({"parameters": BUILTIN_PARAMETERS, "load": BUILTIN_LOAD})),
        (Layer.CONFIG, _values({"parameters": settings.parameters, "load": settings.load,
                                "parameters.keep_alive": settings.keep_alive})),
    ]
    entry = registry.get(name)
    if entry is not None:
        chain = _built_on(entry, registry)
        for link in reversed(chain):  # the alias it builds on first: the alias asked for has the last word
            layers.append((Layer.MODELFILE, _values(link.modelfile.model_dump(
                include={"revision", "system", "template", "messages", "parameters", "load"}))))
        layers[-1][1]["model"] = chain[-1].modelfile.from_
    elif _names_a_model(bare := name.removesuffix(":latest")):  # Ollama clients add the tag to every name
        layers.append((Layer.NAME, {"model": bare}))
    else:
        raise AliasNotFound(name, known=list(registry.entries))
    layers += [(layer, _values(overrides.model_dump())) for layer, overrides in
               ((Layer.CLI, cli), (Layer.API, api)) if overrides is not None]

    merged: dict[str, Any] = {}
    sources: dict[str, Layer] = {}
    for layer, values in layers:
        merged.update(values)
        sources.update(dict.fromkeys(values, layer))
    return Resolved(name=name, alias=entry.name if entry else None, sources=sources, **_nest(merged))


#: How many aliases one may build on, each on the next (Ollama's ``FROM another-model``).
MAX_BASES = 8


def _built_on(entry: RegistryEntry, registry: Registry) -> list[RegistryEntry]:
    """``entry``, then each alias its ``from`` names in turn, down to the one whose ``from`` is a model."""
    chain = [entry]
    while not (is_local_path(base := chain[-1].modelfile.from_) or looks_like_repo_id(base)) and \
            (found := registry.get(base)) is not None:
        if found in chain or len(chain) > MAX_BASES:
            names = " -> ".join(link.name for link in [*chain, found])
            raise ModelfileError(f"its 'from' goes round in a circle or too deep ({names}); name a model",
                                 path=entry.path)
        chain.append(found)
    return chain


def _names_a_model(name: str) -> bool:
    """A Hub repo id, a local path that holds a model, or a model already in the Hub cache (``gpt2``)."""
    return looks_like_repo_id(name) or is_model_path(name) or \
        (bool(LEGACY_REPO_ID.fullmatch(name)) and hub.local_snapshot(name) is not None)


def _values(data: BaseModel | dict[str, Any]) -> dict[str, Any]:
    """The values a layer sets, as dotted keys; None means "not set here"."""
    if isinstance(data, BaseModel):
        data = data.model_dump()
    data = {key: value.model_dump() if isinstance(value, BaseModel) else value for key, value in data.items()}
    return {key: value for key, value in _flatten(data).items() if value is not None}


#: Settings whose value is itself a mapping (a JSON schema, vLLM's knobs): one value, set or overridden whole.
_WHOLE = {"parameters.format", "load.vllm"}


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and f"{prefix}{key}" not in _WHOLE:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {"parameters": {}, "load": {}}
    for key, value in flat.items():
        section, _, leaf = key.rpartition(".")
        (nested[section] if section else nested)[leaf] = value
    return nested
