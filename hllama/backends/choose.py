"""The one place that knows which backend serves an alias: how much memory it will take, and how to load it."""

from __future__ import annotations

from dataclasses import dataclass, replace

from hllama.aliases.resolve import Resolved
from hllama.backends.base import Backend
from hllama.backends.local import Local
from hllama.backends.upstream import Upstream
from hllama.backends.vllm import ManagedVllm, footprint
from hllama.config import Settings
from hllama.models.hardware import Budget
from hllama.models.source import locate, plan_load


def is_upstream(resolved: Resolved) -> bool:
    """Whether the alias is served by an engine in another process (one it names, or a vLLM hllama starts)."""
    return bool(resolved.load.upstream) or resolved.load.engine == "vllm"


@dataclass(frozen=True)
class Backends:
    """The scheduler's ``size`` and ``load`` for every kind of alias. ``force`` loads even what looks too large for
    memory (``hllama chat --force``)."""

    settings: Settings
    budget: Budget
    force: bool = False

    def size(self, resolved: Resolved, available: int) -> int:
        """The bytes the alias's backend will take here, estimated before anything loads."""
        if resolved.load.upstream:
            return 0
        source = locate(resolved.model, resolved.revision)
        load_plan = plan_load(source, replace(self.budget, bytes=available), load=resolved.load,
                              context=resolved.parameters.ctx)
        if resolved.load.engine == "vllm":
            needed = footprint(resolved, load_plan.chosen.weights, device=self.budget.device, available=available)
        elif not load_plan.fits and not self.force:  # more than the whole budget: no eviction would make room
            raise load_plan.refusal(resolved.model)
        else:
            needed = load_plan.chosen.total
        return min(needed, available) if self.force else needed

    def load(self, resolved: Resolved, available: int) -> Backend:
        """The alias's backend, loaded (or started) within ``available`` bytes."""
        if resolved.load.upstream:
            return Upstream.of(resolved)
        if resolved.load.engine == "vllm":
            server = ManagedVllm(resolved, python=self.settings.vllm_python, log_dir=self.settings.home / "logs")
            server.reserved_bytes = self.size(resolved, available)
            return server
        from hllama.engine import load_model

        budget = replace(self.budget, bytes=available, source="memory left for models")
        return Local(load_model(resolved, budget=budget, force=self.force))
