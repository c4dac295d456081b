"""Find a model's files and load it with the resolved settings, refusing what will not fit."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from typing import Any

from hllama.aliases.resolve import Resolved
from hllama.engine.batch import BatchEngine, batchable
from hllama.engine.cancel import make_cancellable
from hllama.engine.convert import gguf_read_once, gguf_to_safetensors
from hllama.engine.embed import pooling_of
from hllama.engine.loaded import LoadedModel
from hllama.engine.prefix import PrefixCache
from hllama.errors import (
    IncompleteModel,
    ModelLoadError,
    QuantizationUnavailable,
)
from hllama.models import embedded, hub
from hllama.models.footprint import text_config
from hllama.models.ggufheader import read_header
from hllama.models.hardware import Budget
from hllama.models.source import ModelSource, is_generative, is_vision, locate, missing_part, plan_load
from hllama.options import LoadOptions
from hllama.progress import report_progress

# bitsandbytes on the CPU warns once per layer per token (8-bit casts) or once per load (optional kernels).
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def converted_embedded(source: ModelSource) -> ModelSource:
    """The embedded model's own snapshot, made from its GGUF file the first time (about 10 s, once)."""

    gguf = source.folder / str(source.gguf_file)
    report_progress(f"converting {gguf.name} once, for loads of a second from now on")
    try:
        return ModelSource(hub.store_snapshot(embedded.REPO_ID, embedded.revision(gguf),
                                              lambda out: gguf_to_safetensors(gguf, out)))
    except (OSError, ValueError, KeyError, ImportError, RuntimeError) as exc:
        where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
        raise ModelLoadError(f"cannot convert the embedded model {embedded.NAME}: "
                             f"{str(getattr(exc, 'strerror', None) or exc).strip().splitlines()[0]}{where}") from exc


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
    load_plan = plan_load(source, budget, load=resolved.load, context=resolved.parameters.ctx)
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
        from hllama.engine.grammar import grammar_tokenizer
        from hllama.engine.streamer import eos_ids_of, vocab_size_of

        loaded.grammar_tokenizer = grammar_tokenizer(tokenizer, vocab_size=vocab_size_of(model),
                                                     eos_ids=eos_ids_of(model, tokenizer))
        if batchable(model) and not sees:  # a vision model runs each request through its own generate
            loaded.batcher = BatchEngine(loaded)
    return loaded


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
