"""What memory there is to load models into: NVIDIA GPUs through NVML, else system RAM.

Detection never imports torch, so ``hllama list`` can say what fits without paying for it.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Literal

import psutil

from hllama.config import Settings

Device = Literal["cuda", "cpu"]


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total: int
    free: int
    compute_capability: tuple[int, int] = (0, 0)

    @property
    def half_precisions(self) -> frozenset[str]:
        """bfloat16 from Ampere (8.0) on; float16 on every GPU that runs transformers."""
        return frozenset({"bfloat16", "float16"}) if self.compute_capability >= (8, 0) else frozenset({"float16"})


@dataclass(frozen=True)
class Hardware:
    gpus: tuple[Gpu, ...]
    ram_total: int
    ram_available: int

    @property
    def device(self) -> Device:
        return "cuda" if self.gpus else "cpu"


@dataclass(frozen=True)
class Budget:
    """How many bytes a model may take, where they are, and who said so; which half precisions run there
    natively (a model stored in one of them loads in it rather than in float32); and how many conversations a
    model holds at once (``num_parallel``), each of which may fill a context's KV cache."""

    bytes: int
    device: Device
    source: str
    half_precisions: frozenset[str] = frozenset()
    conversations: int = 1


def detect_hardware() -> Hardware:
    memory = psutil.virtual_memory()
    return Hardware(gpus=tuple(_nvidia_gpus()) if _torch_has_cuda() else (),
                    ram_total=memory.total, ram_available=memory.available)


def memory_budget(settings: Settings, hardware: Hardware | None = None) -> Budget:
    """``HLLAMA_MEMORY_BUDGET`` if set; else the free memory of every GPU; else available RAM."""
    hardware = hardware or detect_hardware()
    half = frozenset.intersection(*(gpu.half_precisions for gpu in hardware.gpus)) if hardware.gpus else \
        cpu_half_precisions()
    if settings.memory_budget is not None:
        return Budget(int(settings.memory_budget), hardware.device, "HLLAMA_MEMORY_BUDGET", half,
                      settings.num_parallel)
    if hardware.gpus:
        names = ", ".join(sorted({gpu.name for gpu in hardware.gpus}))
        return Budget(sum(gpu.free for gpu in hardware.gpus), "cuda",
                      f"free memory of {len(hardware.gpus)} GPU(s): {names}", half, settings.num_parallel)
    return Budget(hardware.ram_available, "cpu", "available system RAM (no GPU found)", half, settings.num_parallel)


#: CPU flags (Linux's /proc/cpuinfo names) under which PyTorch runs a half precision natively, not by
#: converting every value to float32: AVX-512 BF16 and AMX (Cooper Lake, Sapphire Rapids, Zen 4 on).
_CPU_HALF_FLAGS = {"bfloat16": {"avx512_bf16", "amx_bf16"}, "float16": {"avx512_fp16", "amx_fp16"}}


def cpu_half_precisions(cpuinfo: str | None = None) -> frozenset[str]:
    """The half precisions this CPU computes in natively; none where it cannot tell (not Linux)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
                cpuinfo = handle.read(1 << 20)
        except OSError:
            return frozenset()
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return frozenset(precision for precision, needed in _CPU_HALF_FLAGS.items() if flags & needed)


def _nvidia_gpus() -> list[Gpu]:
    """Every GPU NVML reports; none when the library, the driver or a GPU is missing."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...: no usable GPU
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            capability = tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle))
            gpus.append(Gpu(index, name.decode() if isinstance(name, bytes) else name,
                            int(memory.total), int(memory.free), capability))  # type: ignore[arg-type]
        return gpus
    except Exception:
        return []
    finally:
        pynvml.nvmlShutdown()


def _torch_has_cuda() -> bool:
    """A CPU build of torch cannot use a GPU even where NVML sees one (read from metadata, no import)."""
    try:
        return not importlib.metadata.version("torch").endswith("+cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
