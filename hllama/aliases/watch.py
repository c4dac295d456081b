"""Hot reload: the server follows its modelfiles folder as files are added, edited, renamed or deleted.

watchfiles reports a burst of changes (a ``git checkout``) as one batch; each batch recompiles the
folder once (:meth:`Service.refresh`: swap the registry in one assignment, rewrite ``registry.json``).
Requests already running keep the settings they resolved; a model whose alias now loads differently
is unloaded as soon as its running requests finish.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from hllama.aliases.modelfile import MODELFILE_SUFFIXES
from hllama.aliases.registry import Registry

log = logging.getLogger("hllama.aliases.watch")

#: A file caught half-written reads as broken; it is read again after this pause before it counts.
SETTLE_SECONDS = 0.15


def is_modelfile(path: str) -> bool:
    name = Path(path).name
    return name.lower().endswith(MODELFILE_SUFFIXES) and not name.startswith(".")


class ModelfileWatcher:
    def __init__(self, service) -> None:  # a Service; untyped to keep this module free of server imports
        self.service = service
        self.folder: Path = service.store.folder
        self._stop = asyncio.Event()

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Follow the folder until :meth:`stop`; ``ready`` is set once changes can no longer be missed."""
        from watchfiles import awatch

        self.folder.mkdir(parents=True, exist_ok=True)
        # A batch closes 30 ms after the last change (an edit shows ~60 ms after its write), or after 0.5 s
        # of changes that keep coming; a git checkout of many files arrives as one batch.
        batches = awatch(self.folder, watch_filter=lambda _, path: is_modelfile(path), debounce=500, step=30,
                         stop_event=self._stop, recursive=False)
        pending = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0)  # the watch is registered as soon as the generator first runs
        await self.apply(set())  # and this catches what changed before that
        if ready is not None:
            ready.set()
        try:
            while True:
                changed = await pending
                await self.apply_safely({Path(path) for _, path in changed})
                pending = asyncio.ensure_future(anext(batches))
        except StopAsyncIteration:
            return

    def stop(self) -> None:
        self._stop.set()

    async def apply_safely(self, changed: set[Path]) -> None:
        """One batch; a failure is logged and the last good registry kept, so following the folder never ends."""
        try:
            await self.apply(changed)
        except Exception:  # noqa: BLE001 - a server fault, but the watch must outlive it
            log.exception("reloading the modelfiles failed; keeping the aliases as they were")
            self.service.metrics.reload_errors.inc()

    async def apply(self, changed: set[Path]) -> None:
        old = self.service.registry
        registry = await asyncio.to_thread(self.service.refresh)
        if _newly_broken(registry, old, changed):
            await asyncio.sleep(SETTLE_SECONDS)  # a writer may still be at it: look once more before reporting
            await asyncio.to_thread(self.service.refresh)
        await self.service.retire_replaced()


def _newly_broken(new: Registry, old: Registry, changed: set[Path]) -> bool:
    before = {error.path for error in old.problems}
    return any(error.path in changed and error.path not in before for error in new.problems)
