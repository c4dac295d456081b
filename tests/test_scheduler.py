import asyncio
import json
import os
from pathlib import Path

import pytest

from hllama.aliases.resolve import Resolved
from hllama.errors import ModelTooLarge, ServerBusy
from hllama.options import BUILTIN_LOAD, BUILTIN_PARAMETERS
from hllama.runtime.scheduler import Clock, Scheduler


class HandClock(Clock):
    """Time that moves only when a test says so."""

    def __init__(self, ticks=None) -> None:
        self.time = 0.0
        self._ticks = ticks  # an iterator: each reading of the clock takes its next value
        self._moved = asyncio.Event()

    def now(self) -> float:
        return float(next(self._ticks)) if self._ticks is not None else self.time

    async def wait_until(self, deadline: float) -> None:
        while self.time < deadline:
            await self._moved.wait()

    async def advance(self, seconds: float) -> None:
        """Move time on, and let what was waiting for it run (an expiry unloads before this returns)."""
        self.time += seconds
        self._moved.set()
        self._moved = asyncio.Event()
        await _settled()


class FakeModel:
    precision = "float32"

    def __init__(self, name: str, size: int, log: list[str]) -> None:
        self.name, self.reserved_bytes, self.log = name, size, log

    def close(self) -> None:
        self.log.append(f"unload {self.name}")


def _resolved(model: str, *, keep_alive: float = 300, quantize: str = "none") -> Resolved:
    parameters = BUILTIN_PARAMETERS.model_copy(update={"keep_alive": keep_alive})
    return Resolved(name=model, model=model, parameters=parameters,
                    load=BUILTIN_LOAD.model_copy(update={"quantize": quantize}), sources={})


def _scheduler(log: list[str], *, budget: int = 100, sizes: dict[str, int] | None = None, **kwargs) -> Scheduler:
    sizes = sizes or {}

    def load(resolved: Resolved, available: int) -> FakeModel:
        log.append(f"load {resolved.model}")
        return FakeModel(resolved.model, sizes.get(resolved.model, 10), log)

    return Scheduler(load=load, size=lambda resolved, _: sizes.get(resolved.model, 10), budget=budget, **kwargs)


def run(coroutine):
    return asyncio.run(coroutine)


async def _until(condition, what: str = "the scheduler to get there") -> None:
    """Let the loop (and the worker threads loads run in) work until ``condition`` holds."""
    for _ in range(1_000_000):
        if condition():
            return
        await asyncio.sleep(0)  # a turn of the loop, not a wait for time to pass
    raise AssertionError(f"waited in vain for {what}")


async def _settled() -> None:
    """Let every task that can run now run, up to where it waits."""
    for _ in range(50):
        await asyncio.sleep(0)


async def _hold(scheduler: Scheduler, name: str, release: asyncio.Event, log: list[str] | None = None) -> None:
    """Use model ``name`` until ``release`` is set (a request that keeps it busy)."""
    async with scheduler.use(_resolved(name)):
        await release.wait()
        if log is not None:
            log.append(f"{name} done")


def test_loads_once_and_reuses():
    log: list[str] = []

    async def scenario():
        scheduler = _scheduler(log)
        for _ in range(3):
            async with scheduler.use(_resolved("a")):
                pass
        return scheduler

    scheduler = run(scenario())
    assert log == ["load a"] and len(scheduler.runners) == 1


def test_other_load_settings_replace_the_loaded_model():
    log: list[str] = []

    async def scenario():
        scheduler = _scheduler(log)
        await scheduler.load(_resolved("a"))
        await scheduler.load(_resolved("a", quantize="8bit"))
        await scheduler.load(_resolved("a", quantize="8bit"))
        return scheduler

    scheduler = run(scenario())
    assert log == ["load a", "unload a", "load a"]
    assert json.loads(scheduler.runners[0].key[2]) == BUILTIN_LOAD.model_copy(update={"quantize": "8bit"}).model_dump()


def test_least_recently_used_idle_model_is_evicted_to_fit():
    log: list[str] = []
    clock = HandClock(iter(range(100)))

    async def scenario():
        scheduler = _scheduler(log, budget=100, sizes={"a": 40, "b": 40, "c": 40}, clock=clock)
        await scheduler.load(_resolved("a"))
        await scheduler.load(_resolved("b"))
        await scheduler.load(_resolved("a"))  # a is now the more recently used
        await scheduler.load(_resolved("c"))
        return scheduler

    scheduler = run(scenario())
    assert log == ["load a", "load b", "unload b", "load c"]
    assert sorted(runner.name for runner in scheduler.runners) == ["a", "c"]


def test_max_loaded_models():
    log: list[str] = []

    async def scenario():
        scheduler = _scheduler(log, budget=1000, max_loaded=2)
        for name in "abc":
            await scheduler.load(_resolved(name))
        return scheduler

    assert [runner.name for runner in run(scenario()).runners] == ["b", "c"]


def test_a_model_larger_than_the_budget_is_refused_before_anything_is_unloaded():
    log: list[str] = []

    async def scenario():
        scheduler = _scheduler(log, budget=100, sizes={"huge": 500})
        await scheduler.load(_resolved("small"))
        await scheduler.load(_resolved("huge"))

    with pytest.raises(ModelTooLarge, match=r"^model requires more system memory \(500 B\) than is available "
                                            r"\(100 B\): the estimate for 'huge', against the server's memory budget$"):
        run(scenario())
    assert log == ["load small"]


def test_a_load_waits_for_busy_models_to_finish_rather_than_failing():
    log: list[str] = []

    async def scenario():
        scheduler = _scheduler(log, budget=50, sizes={"a": 40, "b": 40})
        release = asyncio.Event()
        holding = asyncio.create_task(_hold(scheduler, "a", release, log))
        await _until(lambda: scheduler.runners and scheduler.runners[0].active == 1)
        loading = asyncio.create_task(scheduler.load(_resolved("b")))
        await _until(lambda: scheduler.waiting_for_room == 1)
        assert not loading.done() and log == ["load a"]  # a is busy: b waits for it, nothing fails
        release.set()
        await asyncio.gather(holding, loading)

    run(scenario())
    assert log == ["load a", "a done", "unload a", "load b"]


def test_loads_waiting_for_room_are_bounded_by_the_queue():
    async def scenario():
        scheduler = _scheduler([], budget=50, sizes={"a": 40, "b": 40, "c": 40}, max_queue=1)
        release = asyncio.Event()
        holding = asyncio.create_task(_hold(scheduler, "a", release))
        await _until(lambda: scheduler.runners and scheduler.runners[0].active == 1)
        waiting = asyncio.create_task(scheduler.load(_resolved("b")))
        await _until(lambda: scheduler.waiting_for_room == 1)
        with pytest.raises(ServerBusy, match="server busy"):
            await scheduler.load(_resolved("c"))
        release.set()
        await asyncio.gather(holding, waiting)

    run(scenario())


def test_keep_alive_zero_unloads_after_the_request_and_expiry_unloads_later():
    log: list[str] = []

    async def scenario():
        clock = HandClock()
        scheduler = _scheduler(log, clock=clock)
        await scheduler.load(_resolved("now", keep_alive=0))
        assert log == ["load now", "unload now"]
        await scheduler.load(_resolved("soon", keep_alive=0.05))
        await clock.advance(0.04)
        assert [runner.name for runner in scheduler.runners] == ["soon"]
        await clock.advance(0.16)
        assert scheduler.runners == []
        await scheduler.load(_resolved("never", keep_alive=-1))
        await clock.advance(3600)
        assert [runner.name for runner in scheduler.runners] == ["never"]

    run(scenario())


def test_a_new_request_cancels_the_expiry():
    async def scenario():
        clock = HandClock()
        scheduler = _scheduler([], clock=clock)
        await scheduler.load(_resolved("a", keep_alive=0.1))
        async with scheduler.use(_resolved("a", keep_alive=0.1)):
            await clock.advance(0.2)  # in use past the first expiry
            assert len(scheduler.runners) == 1
        assert len(scheduler.runners) == 1
        await clock.advance(0.2)  # its own keep_alive, counted from the end of the request
        assert scheduler.runners == []

    run(scenario())


def test_the_queue_is_bounded():
    async def scenario():
        scheduler = _scheduler([], max_queue=1)
        release = asyncio.Event()
        first = asyncio.create_task(_hold(scheduler, "a", release))
        await _until(lambda: scheduler.runners and scheduler.runners[0].active == 1)
        second = asyncio.create_task(_hold(scheduler, "a", release))  # waits for the one slot
        await _until(lambda: scheduler.runners[0].waiting == 1)
        with pytest.raises(ServerBusy, match="server busy"):
            async with scheduler.use(_resolved("a")):
                pass
        release.set()
        await asyncio.gather(first, second)

    run(scenario())


def test_unloading_really_frees_memory(tmp_path: Path):
    """A 35M-parameter model (140 MB in float32): RSS grows by about that once used, and drops on unload (without
    returning freed memory to the system, it stayed where it was: 520 MB loaded and unloaded, against 411 before).

    Measured in a process of its own: in the test run's process, memory other tests freed may be reused for
    the weights, and RSS would not grow by their size.
    """
    import subprocess
    import sys

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from .tinymodel import build_tokenizer

    config = LlamaConfig(vocab_size=8000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512)
    # stored in bfloat16 and loaded as float32: the weights are the process's own memory, not the file's pages
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path / "big")
    build_tokenizer().save_pretrained(tmp_path / "big")
    # glibc keeps what the process frees for its next allocations unless it is trimmed. One arena, so that what is
    # measured does not depend on how many threads this machine gives the model (each may have an arena of its own)
    env = {**os.environ, "HLLAMA_HOME": str(tmp_path / "home"), "MALLOC_ARENA_MAX": "1"}
    result = subprocess.run([sys.executable, "-c", _MEASURE_UNLOAD, str(tmp_path)], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    before, loaded, after = map(int, result.stdout.split())
    weights = 8000 * 512 * 2 * 4 + 8 * (4 * 512 * 512 + 3 * 512 * 1536) * 4
    assert loaded - before > 0.8 * weights, (before, loaded, after)
    assert after - before < 0.25 * weights, (before, loaded, after)


_MEASURE_UNLOAD = """
import asyncio, gc, os, sys
from pathlib import Path

import psutil
import torch

from hllama.config import Settings
from hllama.engine import load_model
from hllama.models.hardware import memory_budget
from hllama.aliases.registry import Registry
from hllama.aliases.resolve import Overrides, resolve
from hllama.runtime.scheduler import Scheduler

folder = Path(sys.argv[1])
settings = Settings(home=folder / "home")
resolved = resolve(str(folder / "big"), settings=settings, registry=Registry(folder),
                   cli=Overrides.model_validate({"load": {"dtype": "float32"}}))
process = psutil.Process(os.getpid())


async def cycle():  # load, use and unload the model: RSS before, while loaded, and after
    scheduler = Scheduler(load=lambda r, available: load_model(r, budget=memory_budget(settings)),
                          size=lambda r, available: 0, budget=2**40)
    gc.collect()
    before = process.memory_info().rss
    runner = await scheduler.load(resolved)
    with torch.no_grad():  # a forward pass touches every weight (safetensors are memory-mapped)
        runner.backend.model(torch.tensor([[1, 2, 3]]))
    loaded = process.memory_info().rss
    await scheduler.unload(runner)
    del runner
    gc.collect()
    return before, loaded, process.memory_info().rss


asyncio.run(cycle())  # the first pays what torch and transformers set up once (thread pools, kernels, code)
print(*asyncio.run(cycle()))
"""
