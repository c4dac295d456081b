"""Find a model's files and load it with the resolved settings, refusing what will not fit."""

from __future__ import annotations

import functools
import gc
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hllama import embedded, hub
from hllama.engine.batch import BatchEngine, batchable
from hllama.engine.cancel import make_cancellable
from hllama.engine.embed import Pooling, pooling_of
from hllama.engine.prefix import PrefixCache
from hllama.errors import (
    IncompleteModel,
    ModelLoadError,
    ModelNotDownloaded,
    NoModelAtPath,
    QuantizationUnavailable,
)
from hllama.footprint import Plan, local_footprint, plan, text_config
from hllama.ggufheader import read_header
from hllama.hardware import Budget
from hllama.names import is_local_path, is_model_path
from hllama.options import LoadOptions
from hllama.resolve import Resolved

# bitsandbytes on the CPU warns once per layer per token (8-bit casts) or once per load (optional kernels).
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


@dataclass(frozen=True)
class ModelSource:
    """Where the files are: a folder, and the GGUF file inside it when that is what was named."""

    folder: Path
    gguf_file: str | None = None


@dataclass
class LoadedModel:
    model_id: str
    revision: str | None
    load: LoadOptions
    source: ModelSource
    plan: Plan
    model: Any
    tokenizer: Any
    memory_bytes: int
    load_duration_ns: int
    context_length: int | None
    generates: bool = True  # False: an embedding model (an encoder), which only embeds
    pooling: Pooling = "mean"  # how its hidden states become one embedding
    cancel_hooks: list[Any] = field(default_factory=list)  # removable: a cancel stops a forward pass at a layer
    prefixes: PrefixCache = field(default_factory=lambda: PrefixCache(0))  # earlier turns' KV caches
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=8, thread_name_prefix="hllama-generate"))
    batcher: BatchEngine | None = None  # None: each request runs its own ``generate`` (see batch.batchable)
    grammar_tokenizer: Any = None  # the tokenizer as structured output's grammars see it (None: cannot be had)
    processor: Any = None  # a vision model's processor (images and text into its inputs); None: text only

    @property
    def precision(self) -> str:
        return self.plan.chosen.precision

    def context_for(self, requested: int | None) -> int | None:
        """The context a request runs in: its ``ctx`` (``num_ctx``), never past the model's own, which a
        request that sets none gets. A larger window would only run the model past what it was trained on."""
        if self.context_length is None:
            return requested
        return min(requested, self.context_length) if requested else self.context_length

    @property
    def reserved_bytes(self) -> int:
        """What the scheduler counts against the budget: the planned total, KV cache and overhead included, with
        the weights as measured once loaded where they took more than planned (an estimate from file sizes)."""
        chosen = self.plan.chosen
        return chosen.total + max(0, self.memory_bytes - chosen.weights)

    @property
    def resident_bytes(self) -> int:
        """What the model holds now, measured: its weights and buffers, and the KV caches kept or in use."""
        return self.memory_bytes + self.prefixes.bytes + (self.batcher.cache_bytes() if self.batcher else 0)

    def close(self) -> None:
        """Drop the weights and caches now rather than at the next garbage collection, and give the memory back
        to the system (a long-running server would otherwise stay at its peak after every unload)."""
        import torch

        self.executor.shutdown(wait=True, cancel_futures=True)
        self.prefixes.clear()
        self.model = self.tokenizer = self.processor = self.batcher = self.grammar_tokenizer = None
        self.cancel_hooks.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return_freed_memory()


def return_freed_memory() -> None:
    """Hand the pages of freed blocks back to the system. glibc keeps what a process frees for its next
    allocations, so without this the resident size after an unload stays what it was while the model was loaded."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return
    if trim is not None:
        trim(0)


def locate(model_id: str, revision: str | None = None) -> ModelSource:
    """A local folder or ``.gguf`` file, else the cached Hub snapshot (:class:`ModelNotDownloaded` if none)."""
    if is_local_path(model_id) or is_model_path(model_id):
        if not is_model_path(model_id):
            raise NoModelAtPath(model_id)
        path = Path(model_id).expanduser()
        if path.is_file():
            return ModelSource(path.parent, path.name)
        if (path / "config.json").is_file():
            return ModelSource(path)
        return ModelSource(path, sorted(path.glob("*.gguf"))[0].name)
    snapshot = hub.local_snapshot(model_id, revision)
    if snapshot is None:
        if (shipped := embedded.unconverted(model_id, revision)) is not None:  # converted when it is loaded
            return ModelSource(shipped.parent, shipped.name)
        raise ModelNotDownloaded(model_id)
    return ModelSource(snapshot)


def converted_embedded(source: ModelSource) -> ModelSource:
    """The embedded model's own snapshot, made from its GGUF file the first time (about 10 s, once)."""
    from hllama.engine.convert import gguf_to_safetensors
    from hllama.scheduler import report_progress

    gguf = source.folder / str(source.gguf_file)
    report_progress(f"converting {gguf.name} once, for loads of a second from now on")
    try:
        return ModelSource(hub.store_snapshot(embedded.REPO_ID, embedded.revision(gguf),
                                              lambda out: gguf_to_safetensors(gguf, out)))
    except (OSError, ValueError, KeyError, ImportError, RuntimeError) as exc:
        where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
        raise ModelLoadError(f"cannot convert the embedded model {embedded.NAME}: "
                             f"{str(getattr(exc, 'strerror', None) or exc).strip().splitlines()[0]}{where}") from exc


def plan_load(resolved: Resolved, source: ModelSource, budget: Budget) -> Plan:
    footprint = local_footprint(source.folder, gguf_file=source.gguf_file)
    return plan(footprint, load=resolved.load, context=resolved.parameters.ctx, budget=budget)


def load_model(resolved: Resolved, *, budget: Budget, force: bool = False) -> LoadedModel:
    """Load ``resolved.model`` at the planned precision; too big for the budget is refused unless ``force``."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a per-tensor bar; front ends say "loading" their own way
    started = time.perf_counter_ns()
    source = locate(resolved.model, resolved.revision)
    if embedded.is_embedded(resolved.model) and source.gguf_file:
        source = converted_embedded(source)
    if (missing := missing_part(source)) is not None:
        raise IncompleteModel(resolved.model, missing)
    load_plan = plan_load(resolved, source, budget)
    if not load_plan.fits and not force:
        raise load_plan.refusal(resolved.model)
    precision = load_plan.chosen.precision
    kwargs = _from_pretrained_kwargs(resolved.load, precision, budget.device, source)
    generates = is_generative(load_plan.footprint.config)
    sees = is_vision(load_plan.footprint.config)
    try:
        if source.gguf_file:  # hostile until read: transformers' own reader fails on a broken one without saying why
            read_header(source.folder / source.gguf_file)
        with gguf_read_once() if source.gguf_file else nullcontext():
            model, tokenizer, processor = _from_pretrained(source, kwargs, resolved.load, generates=generates,
                                                           sees=sees)
    except (OSError, ValueError, KeyError, ImportError, RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"cannot load '{resolved.model}': {str(exc).strip().splitlines()[0]}") from exc
    model.eval()
    trained = text_config(model.config.to_dict()).get("max_position_embeddings")
    loaded = LoadedModel(
        model_id=resolved.model, revision=resolved.revision, load=resolved.load, source=source, plan=load_plan,
        model=model, tokenizer=tokenizer, memory_bytes=int(model.get_memory_footprint()),
        load_duration_ns=time.perf_counter_ns() - started,
        context_length=trained if isinstance(trained, int) else None, generates=generates,
        pooling=pooling_of(source.folder), cancel_hooks=make_cancellable(model),
        prefixes=PrefixCache(load_plan.chosen.kv_cache), processor=processor)  # within its KV cache estimate
    if generates:
        from hllama.engine.generate import eos_ids_of, vocab_size_of
        from hllama.engine.grammar import grammar_tokenizer

        loaded.grammar_tokenizer = grammar_tokenizer(tokenizer, vocab_size=vocab_size_of(model),
                                                     eos_ids=eos_ids_of(model, tokenizer))
        if batchable(model) and not sees:  # a vision model runs each request through its own generate
            loaded.batcher = BatchEngine(loaded)
    return loaded


#: The files a tokenizer may be made from (besides ``*.tiktoken``); a model folder with none of them has none.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model")


def missing_part(source: ModelSource) -> str | None:
    """What a model's folder lacks that loading it needs, said so a person can act on it; None when nothing is
    missing (a GGUF file carries its own tokenizer)."""
    if source.gguf_file:
        return None
    folder = source.folder
    if not any((folder / name).is_file() for name in TOKENIZER_FILES) and not any(folder.glob("*.tiktoken")):
        return f"tokenizer in {folder} (none of {', '.join(TOKENIZER_FILES[:3])} or the like)"
    if not any(any(folder.glob(pattern)) for pattern in ("*.safetensors", "*.bin", "*.pt", "*.pth")):
        return f"weights in {folder} (no *.safetensors or *.bin file)"
    return None


def _from_pretrained(source: ModelSource, kwargs: dict[str, Any], load: LoadOptions, *, generates: bool,
                     sees: bool) -> tuple[Any, Any, Any]:
    """The model, its tokenizer, and a vision model's processor (else None), through transformers' Auto classes."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    trust = bool(load.trust_remote_code)
    if sees:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(source.folder, trust_remote_code=trust)
        return AutoModelForImageTextToText.from_pretrained(source.folder, **kwargs), processor.tokenizer, processor
    tokenizer = AutoTokenizer.from_pretrained(source.folder, gguf_file=source.gguf_file, trust_remote_code=trust)
    return (AutoModelForCausalLM if generates else AutoModel).from_pretrained(source.folder, **kwargs), tokenizer, None


#: One GGUF load at a time patches the gguf package (see :func:`gguf_read_once`).
_GGUF_LOADING = threading.Lock()


@contextmanager
def gguf_read_once() -> Iterator[None]:
    """transformers reads a GGUF file's whole header (its vocabulary too) once for the config, again for the
    tokenizer and again for the weights, and builds gguf's tensor-name map once per module of the model: 12 of
    the 19 s a 135M model took. Within this block the file is read once and each map built once; the per-tensor
    progress bar it writes to stderr becomes the load's progress in ``/api/ps`` instead."""
    try:
        import gguf
    except ImportError:
        raise ImportError("GGUF files load with the gguf package: pip install 'hllama[gguf]'") from None
    import transformers.modeling_gguf_pytorch_utils as gguf_loading

    from hllama.scheduler import report_progress

    readers: dict[tuple[str, str], Any] = {}
    reader_class, name_map, progress_bar = gguf.GGUFReader, gguf.get_tensor_name_map, gguf_loading.tqdm

    def read(path: Any, mode: str = "r") -> Any:
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = reader_class(path, mode)
        return readers[key]

    def progress(tensors: Any, **_: Any) -> Iterator[Any]:
        for done, tensor in enumerate(tensors):
            report_progress(f"dequantizing the GGUF file's tensors: {done}/{len(tensors)}")
            yield tensor

    with _GGUF_LOADING:
        gguf.GGUFReader, gguf.get_tensor_name_map = read, functools.cache(name_map)
        gguf_loading.tqdm = progress
        try:
            yield
        finally:
            gguf.GGUFReader, gguf.get_tensor_name_map, gguf_loading.tqdm = reader_class, name_map, progress_bar


def is_generative(config: dict[str, Any]) -> bool:
    """A language model (loaded for generation), not an encoder such as BERT (loaded to embed).

    Told by ``architectures`` in config.json; a config that does not say (GGUF) is a language model.
    """
    architectures = config.get("architectures") or []
    return not architectures or any(name.endswith(_GENERATIVE) for name in architectures)


_GENERATIVE = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def is_vision(config: dict[str, Any]) -> bool:
    """A model that reads images (Llava, Qwen2.5-VL, Gemma 3, SmolVLM...): its config has a vision part."""
    return isinstance(config.get("vision_config"), dict)


def _from_pretrained_kwargs(load: LoadOptions, precision: str, device: str, source: ModelSource) -> dict[str, Any]:
    import torch

    compute = torch.bfloat16 if device == "cuda" else torch.float32
    kwargs: dict[str, Any] = {"trust_remote_code": bool(load.trust_remote_code), "gguf_file": source.gguf_file}
    if precision in ("8bit", "4bit"):
        kwargs["quantization_config"] = _bitsandbytes_config(precision, compute)
        kwargs["dtype"] = compute
    else:
        kwargs["dtype"] = getattr(torch, precision)
    device_map = load.device_map or "auto"
    if device_map != "auto" or device == "cuda":
        kwargs["device_map"] = device_map  # on the CPU, "auto" is a plain load
    return kwargs


def _bitsandbytes_config(precision: str, compute_dtype: Any) -> Any:
    try:
        import bitsandbytes  # noqa: F401  (fails here when its native library cannot run on this machine)
    except ImportError:
        raise QuantizationUnavailable(
            f"{precision} loading needs bitsandbytes, which is not installed: pip install 'hllama[quant]' "
            "(or load without --load-in-8bit/--load-in-4bit)") from None
    except Exception as exc:
        raise QuantizationUnavailable(
            f"bitsandbytes cannot run on this machine ({str(exc).splitlines()[0]}); "
            "load without quantization, or install a bitsandbytes build for this hardware") from None
    from transformers import BitsAndBytesConfig

    if precision == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)
