"""Which models are loaded: load on first use, share, expire after keep_alive, evict to stay in budget.

The scheduler knows nothing of transformers: it is given a ``load`` function, a ``size`` function
(the bytes a model will take, estimated before loading) and a clock, so tests drive it with fakes.
Loading and unloading run in worker threads; the event loop never waits on them. Each loaded model
runs ``parallel`` requests at once; the rest wait in a bounded queue (full: :class:`ServerBusy`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from hllama.errors import ModelTooLarge, ServerBusy
from hllama.hardware import format_bytes
from hllama.resolve import Resolved

log = logging.getLogger(__name__)


class Loaded(Protocol):
    """What the scheduler needs of a loaded model (the engine's LoadedModel is one)."""

    @property
    def reserved_bytes(self) -> int: ...

    @property
    def precision(self) -> str: ...

    def close(self) -> None: ...

    # It may also have ``parallel``: the requests it runs at once, when not the scheduler's (an engine elsewhere
    # batches its own). One that takes no memory here (``reserved_bytes`` 0) does not count against max_loaded.


LoadFn = Callable[[Resolved, int], Loaded]  # (what to load, bytes it may use) -> loaded model
SizeFn = Callable[[Resolved, int], int]  # (what to load, bytes it may use) -> bytes it will take


def load_key(resolved: Resolved) -> tuple:
    """Two requests share a loaded model when these agree; anything else means loading again."""
    return resolved.model, resolved.revision, json.dumps(resolved.load.model_dump(), sort_keys=True)  # hashable


@dataclass(eq=False)
class Loading:
    """A model on its way in, for ``/api/ps``: since when (the scheduler's clock), and the loader's latest word."""

    key: tuple
    name: str
    started: float
    status: str = ""


_loading: ContextVar[Loading | None] = ContextVar("hllama_loading", default=None)


def report_progress(status: str) -> None:
    """For a loader, in the worker thread the scheduler runs it in: how loading goes (shown by ``/api/ps``)."""
    if (loading := _loading.get()) is not None:
        loading.status = status[:500]


@dataclass(eq=False)
class Runner:
    key: tuple
    name: str
    model: Loaded
    size: int
    parallel: int
    keep_alive: float = 300.0
    context: int | None = None  # the context window (``ctx``) the latest request asked for; None: the model's own
    active: int = 0
    waiting: int = 0
    last_used: float = 0.0
    expires_at: float = math.inf  # on the scheduler's clock; inf: never (or in use)
    retiring: bool = False  # unload as soon as the requests using it finish
    slots: asyncio.Semaphore = field(init=False)
    _timer: asyncio.TimerHandle | None = None

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.parallel)

    @property
    def idle(self) -> bool:
        return self.active == 0 and self.waiting == 0


class Scheduler:
    def __init__(self, *, load: LoadFn, size: SizeFn, budget: int, max_loaded: int = 3, max_queue: int = 512,
                 parallel: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self._load = load
        self._size = size
        self.budget = budget
        self.max_loaded = max_loaded
        self.max_queue = max_queue
        self.parallel = parallel
        self.clock = clock
        self.runners: list[Runner] = []
        self.loading: list[Loading] = []  # what is being loaded now (one at a time)
        self.observer: Any = None  # told of each load (``loaded(name, seconds)``) and unload (``unloaded(name)``)
        self._load_lock = asyncio.Lock()  # one load at a time, as Ollama does
        self._waiting_to_load = 0  # requests for models not loaded yet, bounded by max_queue as the others are
        self._finished = asyncio.Event()  # set whenever a model's last request ends: room may be made now

    @property
    def used(self) -> int:
        return sum(runner.size for runner in self.runners)

    @property
    def loaded_here(self) -> int:
        """Models that live in this process (an upstream engine's alias does not)."""
        return sum(1 for runner in self.runners if runner.size)

    @asynccontextmanager
    async def use(self, resolved: Resolved) -> AsyncIterator[Runner]:
        """Hold a loaded model for one request; its keep_alive (0: unload now; negative: never) starts after."""
        runner = await self._runner_for(resolved)
        if runner.waiting >= self.max_queue:
            raise ServerBusy()
        runner.waiting += 1
        try:
            await runner.slots.acquire()
        finally:
            runner.waiting -= 1
        runner.active += 1
        runner.context = resolved.parameters.ctx
        self._cancel_timer(runner)
        try:
            yield runner
        finally:
            runner.active -= 1
            runner.slots.release()
            runner.last_used = self.clock()
            runner.keep_alive = resolved.parameters.keep_alive
            if runner.idle:
                self._finished.set()
                await (self.unload(runner) if runner.retiring else self._arm(runner))

    async def load(self, resolved: Resolved) -> Runner:
        """Load without generating (Ollama's empty prompt); keep_alive 0 unloads at once."""
        async with self.use(resolved) as runner:
            return runner

    async def unload(self, runner: Runner) -> None:
        if runner in self.runners:
            self.runners.remove(runner)
            self._cancel_timer(runner)
            if self.observer is not None:
                self.observer.unloaded(runner.name)
            started = self.clock()
            await asyncio.to_thread(runner.model.close)
            log.info("unloaded %s (%s, %s) in %.1f s", runner.name, runner.model.precision, format_bytes(runner.size),
                     self.clock() - started)

    async def retire(self, key: tuple) -> None:
        """Unload the model loaded under ``key`` now if idle, else when its running requests finish."""
        for runner in [runner for runner in self.runners if runner.key == key]:
            runner.retiring = True
            if runner.idle:
                await self.unload(runner)

    async def close(self) -> None:
        for runner in list(self.runners):
            await self.unload(runner)

    def find(self, resolved: Resolved) -> Runner | None:
        key = load_key(resolved)
        return next((runner for runner in self.runners if runner.key == key and not runner.retiring), None)

    async def _runner_for(self, resolved: Resolved) -> Runner:
        if (runner := self.find(resolved)) is not None:
            return runner
        if self._waiting_to_load >= self.max_queue:
            raise ServerBusy()
        self._waiting_to_load += 1
        try:
            return await self._load_runner(resolved)
        finally:
            self._waiting_to_load -= 1

    async def _load_runner(self, resolved: Resolved) -> Runner:
        async with self._load_lock:
            if (runner := self.find(resolved)) is not None:  # loaded while this request waited
                return runner
            for stale in [runner for runner in self.runners if runner.key[:2] == load_key(resolved)[:2]]:
                if stale.idle:  # same model, other load settings: this request replaces it
                    await self.unload(stale)
            needed = await asyncio.to_thread(self._size, resolved, self.budget)
            await self._make_room(resolved, needed)
            started = self.clock()
            loading = Loading(load_key(resolved), resolved.alias or resolved.model, started)
            self.loading.append(loading)
            reporting = _loading.set(loading)  # the worker thread gets a copy of this context
            try:
                model = await asyncio.to_thread(self._load, resolved, self.budget - self.used)
            finally:
                _loading.reset(reporting)
                self.loading.remove(loading)
            runner = Runner(key=load_key(resolved), name=resolved.alias or resolved.model, model=model,
                            size=model.reserved_bytes, parallel=getattr(model, "parallel", self.parallel),
                            keep_alive=resolved.parameters.keep_alive, context=resolved.parameters.ctx,
                            last_used=started)
            self.runners.append(runner)
            log.info("loaded %s (%s, %s) in %.1f s", runner.name, model.precision, format_bytes(runner.size),
                     self.clock() - started)
            if self.observer is not None:
                self.observer.loaded(runner.name, self.clock() - started)
            return runner

    async def _make_room(self, resolved: Resolved, needed: int) -> None:
        """Unload idle models, least recently used first, until ``needed`` fits and the count allows one more;
        where only busy models stand in the way, wait for one to finish, as Ollama does."""
        if needed > self.budget:  # nothing to evict would make room: say so before unloading anything
            raise ModelTooLarge(resolved.model, needed, self.budget, "the server's memory budget")
        while (needed and self.loaded_here >= self.max_loaded) or self.used + needed > self.budget:
            idle = sorted((runner for runner in self.runners if runner.idle and runner.size),
                          key=lambda runner: runner.last_used)
            if idle:
                await self.unload(idle[0])
                continue
            log.info("%s waits for a busy model to finish to make room", resolved.alias or resolved.model)
            self._finished.clear()
            await self._finished.wait()

    async def _arm(self, runner: Runner) -> None:
        """Start the keep_alive countdown of a model nobody is using."""
        if runner.keep_alive == 0:
            await self.unload(runner)
            return
        if runner.keep_alive < 0:
            runner.expires_at = math.inf
            return
        runner.expires_at = self.clock() + runner.keep_alive
        loop = asyncio.get_running_loop()
        runner._timer = loop.call_later(runner.keep_alive, lambda: asyncio.ensure_future(self._expire(runner)))

    async def _expire(self, runner: Runner) -> None:
        if runner.idle and self.clock() >= runner.expires_at - 1e-3:
            await self.unload(runner)

    def _cancel_timer(self, runner: Runner) -> None:
        if runner._timer is not None:
            runner._timer.cancel()
            runner._timer = None
        runner.expires_at = math.inf

    def expires_in(self, runner: Runner) -> float:
        """Seconds until ``runner`` unloads; inf while in use or kept forever."""
        return runner.expires_at - self.clock()
