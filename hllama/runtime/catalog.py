"""Everything ``hllama list`` can offer: aliases and cached Hub models, with what each needs and whether it fits.

Reads only headers and config files, so listing stays fast and never imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hllama.aliases.registry import Registry, RegistryEntry
from hllama.aliases.resolve import Resolved, resolve
from hllama.config import Settings
from hllama.errors import ModelNotDownloaded, NoModelAtPath
from hllama.models import hub
from hllama.models.footprint import Plan
from hllama.models.hardware import Budget
from hllama.models.source import locate, plan_load


@dataclass(frozen=True)
class Row:
    name: str
    model: str
    source: str  # the modelfile, or "hub cache"
    parameters: str = ""
    size: int | None = None  # weights on disk
    plan: Plan | None = None  # None: files not on this machine
    note: str = ""
    quantize: str | None = None  # what the alias asks for, shown until a plan says more

    @property
    def precision(self) -> str:
        return self.plan.chosen.precision if self.plan else (self.quantize or "-")

    @property
    def fits(self) -> bool | None:
        return None if self.plan is None else self.plan.fits


def catalog(settings: Settings, registry: Registry, budget: Budget) -> list[Row]:
    """Every alias, and every model in the Hub cache under its repo id, aliased or not (as Ollama lists a
    created model beside its base): clients select models by either name."""
    rows = [_alias_row(entry, settings, registry, budget) for entry in registry]
    for cached in hub.cached_models():
        load_plan, note = _plan_or_note(resolve(cached.repo_id, settings=settings, registry=registry), budget)
        rows.append(Row(name=cached.repo_id, model=cached.repo_id, source="hub cache",
                        size=cached.size_on_disk, plan=load_plan, note=note))
    return rows


def plan_for(resolved: Resolved, budget: Budget) -> Plan | None:
    """The load plan when the model's files are on this machine, else None."""
    return _plan_or_note(resolved, budget)[0]


def _alias_row(entry: RegistryEntry, settings: Settings, registry: Registry, budget: Budget) -> Row:
    load_plan, note = _plan_or_note(resolve(entry.name, settings=settings, registry=registry), budget)
    return Row(name=entry.name, model=entry.modelfile.from_, source="built-in" if entry.builtin else entry.path.name,
               parameters=key_parameters(entry), size=load_plan.footprint.files_bytes if load_plan else None,
               plan=load_plan, note=note, quantize=entry.modelfile.load.quantize)


def _plan_or_note(resolved: Resolved, budget: Budget) -> tuple[Plan | None, str]:
    if upstream := resolved.load.upstream:
        return None, f"served by {upstream[0]}" + (f" and {len(upstream) - 1} more" if len(upstream) > 1 else "")
    try:
        source = locate(resolved.model, resolved.revision)
    except ModelNotDownloaded:
        return None, "not downloaded"
    except NoModelAtPath:
        return None, "missing"
    return plan_load(source, budget, load=resolved.load, context=resolved.parameters.ctx), ""


def key_parameters(entry: RegistryEntry) -> str:
    shown = ("temperature", "top_p", "top_k", "ctx", "max_new_tokens", "stop", "json_mode")
    values = entry.modelfile.parameters.model_dump(include=set(shown), exclude_none=True)
    return " ".join(f"{key}={json.dumps(values[key], ensure_ascii=False)}" for key in shown if key in values)
