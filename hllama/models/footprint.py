"""How much memory a model will need, known before loading it (or downloading it).

Two estimates, both reported: the rule of thumb (1.5 × the size of the weight files) and a better
one from the safetensors headers: parameters × bytes per parameter at the chosen precision, plus
the KV cache for the context length (from config.json), or while loading the stored files being
converted to another precision where that is more, and an overhead. Decisions use the better one
whenever the headers are known. hllama's own process (Python, torch, transformers) is not counted:
``bench/memory.py`` measures it, and measures the estimate against real peaks.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hllama.errors import ModelTooLarge
from hllama.models.ggufheader import NotGguf, read_header
from hllama.models.hardware import Budget, Device
from hllama.options import LoadOptions

#: Bytes per parameter at each precision. bitsandbytes keeps a scale per row (8-bit) or per block
#: of 64 (4-bit, nf4 with double quantisation), hence the fractions.
PRECISION_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "8bit": 1.02, "4bit": 0.53}

#: Context assumed for the KV cache when neither the alias nor the request sets one.
DEFAULT_ESTIMATE_CONTEXT = 4096

_OVERHEAD = {"cpu": 64 * 2**20, "cuda": 512 * 2**20}  # allocator slack; CUDA context on a GPU
_NOT_QUANTIZED = ("embed", "embd", "lm_head", "wte", "wpe", "norm")


@dataclass(frozen=True)
class Footprint:
    """What the files say about a model's size."""

    files_bytes: int = 0
    parameters: int = 0  # 0: unknown (no safetensors headers)
    quantizable: int = 0  # parameters in the 2-D weights bitsandbytes would quantize
    config: Mapping[str, Any] = field(default_factory=dict)
    format: str = "safetensors"  # of the weight files: safetensors, pytorch (.bin) or gguf
    dtype: str | None = None  # what the checkpoint stores its weights in (float32, bfloat16, float16), if known
    quantization: str | None = None  # a GGUF file's own level (Q4_K_M), whatever it is dequantized to on load


@dataclass(frozen=True)
class Estimate:
    precision: str
    context: int
    weights: int
    kv_cache: int  # for ``conversations`` contexts
    overhead: int
    rule_of_thumb: int
    conversations: int = 1
    converting: int = 0  # held only while loading: the stored files read while another precision is made of them

    @property
    def total(self) -> int:
        """The most held at once: while loading the conversion's source, later the KV caches (never both)."""
        return self.weights + max(self.kv_cache, self.converting) + self.overhead


@dataclass(frozen=True)
class Plan:
    """The precision a model will load at, against the budget, with the alternatives."""

    chosen: Estimate
    budget: Budget
    alternatives: tuple[Estimate, ...]
    footprint: Footprint

    @property
    def fits(self) -> bool:
        return self.chosen.total <= self.budget.bytes

    def hint(self) -> str | None:
        """The flag (and modelfile setting) that would make it fit, if one would."""
        for estimate in self.alternatives:
            if estimate.total <= self.budget.bytes and estimate.precision in ("8bit", "4bit"):
                return (f"fits with --load-in-{estimate.precision} (quantize: {estimate.precision} in its modelfile, "
                        "or quantize: auto for the best precision that fits)")
        return None

    def refusal(self, model: str) -> ModelTooLarge:
        """What loading ``model`` by this plan is answered with where it does not fit."""
        chosen, conversations = self.chosen, self.chosen.conversations
        return ModelTooLarge(model, chosen.total, self.budget.bytes, self.budget.source, self.hint(),
                             detail=f" at {chosen.precision} with a {chosen.context}-token context"
                                    f"{f' for each of {conversations} conversations' if conversations > 1 else ''}",
                             device=self.budget.device)


def footprint_from_tensors(tensors: Iterable[tuple[str, str, Iterable[int]]], *, files_bytes: int,
                           config: Mapping[str, Any]) -> Footprint:
    """A footprint from (name, safetensors dtype, shape) triples, local or read from the Hub."""
    parameters = quantizable = 0
    by_dtype: dict[str, int] = {}
    for name, dtype, shape in tensors:
        dims = list(shape)
        count = 1
        for dim in dims:
            count *= dim
        parameters += count
        if dtype in _FLOAT_DTYPES:
            by_dtype[_FLOAT_DTYPES[dtype]] = by_dtype.get(_FLOAT_DTYPES[dtype], 0) + count
        if len(dims) == 2 and not any(part in name for part in _NOT_QUANTIZED):
            quantizable += count
    stored = max(by_dtype, key=by_dtype.__getitem__) if by_dtype else _config_dtype(config)
    return Footprint(files_bytes=files_bytes, parameters=parameters, quantizable=quantizable, config=config,
                     dtype=stored)


#: safetensors' names of the floating-point dtypes a model loads in.
_FLOAT_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def _config_dtype(config: Mapping[str, Any]) -> str | None:
    """What config.json says the weights are (``torch_dtype``, or ``dtype`` since transformers 5)."""
    text = text_config(config)
    stored = text.get("dtype") or text.get("torch_dtype") or config.get("dtype") or config.get("torch_dtype")
    return stored if stored in _FLOAT_DTYPES.values() else None


def local_footprint(folder: Path, *, gguf_file: str | None = None) -> Footprint:
    """Read headers and config.json only; nothing is loaded."""
    config = _read_config(folder)
    if gguf_file:
        return _gguf_footprint(folder / gguf_file, config)
    weights = sorted(folder.glob("*.safetensors"))
    if weights:
        tensors = [item for path in weights for item in read_safetensors_header(path)]
        return footprint_from_tensors(tensors, files_bytes=sum(path.stat().st_size for path in weights),
                                      config=config)
    legacy = sorted(folder.glob("*.bin"))
    return Footprint(files_bytes=sum(path.stat().st_size for path in legacy), config=config, format="pytorch",
                     dtype=_config_dtype(config))


def read_safetensors_header(path: Path) -> list[tuple[str, str, list[int]]]:
    """(name, dtype, shape) of every tensor: the first 8 bytes give the JSON header's length."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return [(name, info["dtype"], info["shape"]) for name, info in header.items() if name != "__metadata__"]


def estimate(footprint: Footprint, *, precision: str, context: int | None, device: Device,
             conversations: int = 1) -> Estimate:
    """What loading at ``precision`` takes; the KV cache is kept in the precision the model computes in, for
    ``conversations`` contexts at once (the requests a batch decodes together)."""
    compute_bytes = int(PRECISION_BYTES[precision]) if precision in _FLOAT_DTYPES.values() else \
        4 if device == "cpu" else 2
    rule_of_thumb = int(1.5 * footprint.files_bytes)
    if footprint.parameters:
        if precision in ("8bit", "4bit"):
            rest = footprint.parameters - footprint.quantizable
            weights = int(footprint.quantizable * PRECISION_BYTES[precision] + rest * compute_bytes)
        else:
            weights = int(footprint.parameters * PRECISION_BYTES[precision])
    else:
        weights = rule_of_thumb
    context = context_for_estimate(footprint, context)
    return Estimate(precision=precision, context=context, weights=weights,
                    kv_cache=conversations * _kv_cache_bytes(footprint.config, context, compute_bytes),
                    overhead=_OVERHEAD[device] + weights // 20, rule_of_thumb=rule_of_thumb,
                    conversations=conversations, converting=_converting(footprint, precision, device))


#: What reading a GGUF file's vocabulary and building its tokenizer holds while it loads, beyond the file's own
#: pages (measured with SmolLM2-135M's 49,152 tokens: ``bench/memory.py``).
GGUF_TOKENIZER_BYTES = 192 * 2**20


def _converting(footprint: Footprint, precision: str, device: Device) -> int:
    """The process memory a load holds beside the weights it makes: the stored files' pages while they are
    converted to another precision (a bfloat16 checkpoint made float32, a GGUF file dequantized). Loaded as
    stored, the weights are those pages; on a GPU the source lies in host memory, outside the budget."""
    if device != "cpu":
        return 0
    if footprint.format == "gguf":
        return footprint.files_bytes + GGUF_TOKENIZER_BYTES
    if footprint.dtype and precision in _FLOAT_DTYPES.values() and footprint.dtype != precision:
        return footprint.files_bytes
    return 0


def plan(footprint: Footprint, *, load: LoadOptions, context: int | None, budget: Budget) -> Plan:
    """Estimates for the requested precision; ``quantize: auto`` takes the best one that fits."""
    full = default_dtype(load.dtype, budget, stored=footprint.dtype)
    candidates = [full, "8bit", "4bit"]
    estimates = {precision: estimate(footprint, precision=precision, context=context, device=budget.device,
                                     conversations=budget.conversations)
                 for precision in candidates}
    quantize = load.quantize or "none"
    if quantize == "auto":
        chosen = next((estimates[p] for p in candidates if estimates[p].total <= budget.bytes), estimates["4bit"])
    else:
        chosen = estimates[full if quantize == "none" else quantize]
    return Plan(chosen=chosen, budget=budget, alternatives=tuple(estimates.values()), footprint=footprint)


def default_dtype(dtype: str | None, budget: Budget, *, stored: str | None = None) -> str:
    """``auto``: what the checkpoint stores, where the hardware computes in it natively.

    A half-precision checkpoint loads as it is where the GPU or CPU runs that precision (bfloat16 from
    Ampere on, and on CPUs with AVX-512 BF16 or AMX); a GPU without bfloat16 takes float16; a CPU without
    it, float32 (converting every value would be slower than that). A float32 checkpoint loads as bfloat16
    (else float16) on a GPU, as float32 on a CPU.
    """
    if dtype and dtype != "auto":
        return dtype
    half = budget.half_precisions
    if stored in ("bfloat16", "float16") and stored in half:
        return stored
    if budget.device == "cuda":
        return "bfloat16" if "bfloat16" in half or not half else "float16"
    return "float32"


def context_for_estimate(footprint: Footprint, context: int | None) -> int:
    trained = text_config(footprint.config).get("max_position_embeddings")
    wanted = context or DEFAULT_ESTIMATE_CONTEXT
    return min(wanted, trained) if isinstance(trained, int) and trained > 0 else wanted


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """Multimodal configs keep the language model's numbers under ``text_config``."""
    inner = config.get("text_config")
    return inner if isinstance(inner, Mapping) else config


def _kv_cache_bytes(config: Mapping[str, Any], context: int, element_bytes: int) -> int:
    text = text_config(config)
    layers = text.get("num_hidden_layers") or 0
    heads = text.get("num_attention_heads") or 0
    kv_heads = text.get("num_key_value_heads") or heads
    head_dim = text.get("head_dim") or ((text.get("hidden_size") or 0) // heads if heads else 0)
    return 2 * layers * kv_heads * head_dim * context * element_bytes


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _gguf_footprint(path: Path, config: Mapping[str, Any]) -> Footprint:
    """GGUF weights are dequantized on load, so count their parameters; the file's own quantization level is
    kept to be reported as Ollama does. A header that cannot be read leaves only the file's size."""
    size = path.stat().st_size
    try:
        header = read_header(path)
    except (OSError, NotGguf):
        return Footprint(files_bytes=size, config=config, format="gguf")
    tensors = [(name, "F32", shape) for name, _, shape in header.tensors]
    footprint = footprint_from_tensors(tensors, files_bytes=size, config={**gguf_config(header.metadata), **config})
    return replace(footprint, format="gguf", quantization=header.file_type)


#: GGUF metadata keys (after ``<architecture>.``) and the config.json names they stand for.
_GGUF_CONFIG = {"block_count": "num_hidden_layers", "context_length": "max_position_embeddings",
                "embedding_length": "hidden_size", "feed_forward_length": "intermediate_size",
                "attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
                "attention.key_length": "head_dim", "rope.freq_base": "rope_theta", "vocab_size": "vocab_size"}


def gguf_config(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """What config.json would say, from a GGUF file's metadata (a .gguf has no config.json beside it),
    plus its ``chat_template``, so sizes, ``model_info`` and capabilities work without loading it."""
    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str) or not architecture:
        return {}
    config: dict[str, Any] = {"model_type": architecture}
    for key, name in _GGUF_CONFIG.items():
        if (found := metadata.get(f"{architecture}.{key}")) is not None:
            config[name] = found
    if isinstance(template := metadata.get("tokenizer.chat_template"), str) and template:
        config["chat_template"] = template
    return config
