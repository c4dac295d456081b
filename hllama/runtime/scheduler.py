"""Which models are loaded: load on first use, share, expire after keep_alive, evict to stay in budget.

The scheduler knows nothing of transformers: it is generic over what it holds (a
:class:`~hllama.backends.Backend` in the server), and is given a ``load`` function, a ``size`` function (the bytes
a model will take, estimated before loading) and a :class:`Clock`, so tests drive it with fakes and move time by hand.
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
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from hllama.aliases.resolve import Resolved
from hllama.errors import ModelTooLarge, ServerBusy
from hllama.progress import reporting_to
from hllama.units import format_bytes

log = logging.getLogger(__name__)


class Held(Protocol):
    """What the scheduler needs of what it holds (every :class:`~hllama.backends.Backend` is one)."""

    @property
    def reserved_bytes(self) -> int:
        """Bytes counted against the budget; 0: it lives elsewhere and does not count against max_loaded."""

    @property
    def precision(self) -> str: ...

    def close(self) -> None: ...


B = TypeVar("B", bound=Held)

LoadFn = Callable[[Resolved, int], B]  # (what to load, bytes it may use) -> loaded model
SizeFn = Callable[[Resolved, int], int]  # (what to load, bytes it may use) -> bytes it will take


class Clock:
    """Time as the scheduler sees it: now, and waiting until a time on the same clock (keep_alive's expiry).
    This one is monotonic; tests pass one they move by hand."""

    def now(self) -> float:
        return time.monotonic()

    async def wait_until(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - self.now()))


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


@dataclass(eq=False)
class Runner(Generic[B]):
    key: tuple
    name: str
    backend: B
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
    _expiry: asyncio.Task | None = None  # waits for expires_at on the scheduler's clock

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.parallel)

    @property
    def idle(self) -> bool:
        return self.active == 0 and self.waiting == 0


class Scheduler(Generic[B]):
    def __init__(self, *, load: LoadFn[B], size: SizeFn, budget: int, max_loaded: int = 3, max_queue: int = 512,
                 parallel: int = 1, clock: Clock | None = None) -> None:
        self._load = load
        self._size = size
        self.budget = budget
        self.max_loaded = max_loaded
        self.max_queue = max_queue
        self.parallel = parallel
        self.clock = clock or Clock()
        self.runners: list[Runner[B]] = []
        self.loading: list[Loading] = []  # what is being loaded now (one at a time)
        self.observer: Any = None  # told of each load (``loaded(name, seconds)``) and unload (``unloaded(name)``)
        self._load_lock = asyncio.Lock()  # one load at a time, as Ollama does
        self._waiting_to_load = 0  # requests for models not loaded yet, bounded by max_queue as the others are
        self._finished = asyncio.Event()  # set whenever a model's last request ends: room may be made now
        self.waiting_for_room = 0  # loads waiting for a busy model to finish

    @property
    def used(self) -> int:
        return sum(runner.size for runner in self.runners)

    @property
    def loaded_here(self) -> int:
        """Models that live in this process (an upstream engine's alias does not)."""
        return sum(1 for runner in self.runners if runner.size)

    @asynccontextmanager
    async def use(self, resolved: Resolved) -> AsyncIterator[Runner[B]]:
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
            runner.last_used = self.clock.now()
            runner.keep_alive = resolved.parameters.keep_alive
            if runner.idle:
                self._finished.set()
                await (self.unload(runner) if runner.retiring else self._arm(runner))

    async def load(self, resolved: Resolved) -> Runner[B]:
        """Load without generating (Ollama's empty prompt); keep_alive 0 unloads at once."""
        async with self.use(resolved) as runner:
            return runner

    async def unload(self, runner: Runner[B]) -> None:
        if runner in self.runners:
            self.runners.remove(runner)
            self._cancel_timer(runner)
            if self.observer is not None:
                self.observer.unloaded(runner.name)
            started = self.clock.now()
            await asyncio.to_thread(runner.backend.close)
            log.info("unloaded %s (%s, %s) in %.1f s", runner.name, runner.backend.precision, format_bytes(runner.size),
                     self.clock.now() - started)

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

    async def _runner_for(self, resolved: Resolved) -> Runner[B]:
        if (runner := self.find(resolved)) is not None:
            return runner
        if self._waiting_to_load >= self.max_queue:
            raise ServerBusy()
        self._waiting_to_load += 1
        try:
            return await self._load_runner(resolved)
        finally:
            self._waiting_to_load -= 1

    async def _load_runner(self, resolved: Resolved) -> Runner[B]:
        async with self._load_lock:
            if (runner := self.find(resolved)) is not None:  # loaded while this request waited
                return runner
            for stale in [runner for runner in self.runners if runner.key[:2] == load_key(resolved)[:2]]:
                if stale.idle:  # same model, other load settings: this request replaces it
                    await self.unload(stale)
            needed = await asyncio.to_thread(self._size, resolved, self.budget)
            await self._make_room(resolved, needed)
            started = self.clock.now()
            loading = Loading(load_key(resolved), resolved.alias or resolved.model, started)
            self.loading.append(loading)
            try:
                with reporting_to(loading):  # the worker thread gets a copy of this context
                    backend = await asyncio.to_thread(self._load, resolved, self.budget - self.used)
            finally:
                self.loading.remove(loading)
            runner = Runner(key=load_key(resolved), name=resolved.alias or resolved.model, backend=backend,
                            size=backend.reserved_bytes, parallel=getattr(backend, "parallel", None) or self.parallel,
                            keep_alive=resolved.parameters.keep_alive, context=resolved.parameters.ctx,
                            last_used=started)
            self.runners.append(runner)
            log.info("loaded %s (%s, %s) in %.1f s", runner.name, backend.precision, format_bytes(runner.size),
                     self.clock.now() - started)
            if self.observer is not None:
                self.observer.loaded(runner.name, self.clock.now() - started)
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
            self.waiting_for_room += 1
            try:
                await self._finished.wait()
            finally:
                self.waiting_for_room -= 1

    async def _arm(self, runner: Runner[B]) -> None:
        """Start the keep_alive countdown of a model nobody is using."""
        if runner.keep_alive == 0:
            await self.unload(runner)
            return
        if runner.keep_alive < 0:
            runner.expires_at = math.inf
            return
        runner.expires_at = self.clock.now() + runner.keep_alive
        runner._expiry = asyncio.ensure_future(self._expire(runner, runner.expires_at))

    async def _expire(self, runner: Runner[B], deadline: float) -> None:
        await self.clock.wait_until(deadline)
        if runner.idle and runner.expires_at == deadline:
            runner._expiry = None  # done waiting: unloading must not cancel this task
            await self.unload(runner)

    def _cancel_timer(self, runner: Runner[B]) -> None:
        if runner._expiry is not None:
            runner._expiry.cancel()
            runner._expiry = None
        runner.expires_at = math.inf

    def expires_in(self, runner: Runner[B]) -> float:
        """Seconds until ``runner`` unloads; inf while in use or kept forever."""
        return runner.expires_at - self.clock.now()
