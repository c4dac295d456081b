"""Settings that reach a model: per-request generation parameters and load-time options.

The two are separate classes on purpose: a change in ``LoadOptions`` means loading the model
again, a change in ``Parameters`` only changes the next ``generate()`` call. Every field defaults
to ``None`` ("not set here"), so a layer that leaves a value unset never overrides a lower one.
Ollama's spellings are accepted at the edge and stored under one name.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from hllama.validation import Text

log = logging.getLogger(__name__)

#: Ollama spelling -> hllama spelling.
SYNONYMS: dict[str, str] = {
    "repeat_penalty": "repetition_penalty",
    "num_predict": "max_new_tokens",
    "num_ctx": "ctx",
}

#: Options Ollama knows that have no meaning for a transformers model. Real Modelfiles and clients
#: send them, so they are accepted and ignored with a warning rather than refused.
OLLAMA_IGNORED_OPTIONS: frozenset[str] = frozenset({
    "num_keep", "typical_p", "num_batch", "num_gpu", "main_gpu", "use_mmap",
    "num_thread", "draft_num_predict", "mirostat", "mirostat_tau", "mirostat_eta", "tfs_z",
    "penalize_newline", "numa", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock",
})

#: Ten years or more is "keep forever": a time that far off overflows clocks and timestamps.
FOREVER_SECONDS = 10 * 365 * 24 * 3600.0

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(value: Any) -> float | None:
    """Seconds from a number or a Go-style duration (``"5m"``, ``"1h30m"``); negative means forever.

    Returns -1.0 for any negative value, the single spelling of "keep forever".
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("a duration must be a number of seconds or a string like '5m'")
    seconds = _parse_duration_text(value.strip()) if isinstance(value, str) else float(value)
    if math.isnan(seconds):
        raise ValueError("a duration must be a number of seconds, not NaN")
    return -1.0 if seconds < 0 or seconds >= FOREVER_SECONDS else seconds


def _parse_duration_text(text: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    try:
        return sign * float(body)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(body)
    if not body or "".join(number + unit for number, unit in parts) != body:
        raise ValueError(f"invalid duration {text!r}: use seconds or a string like '30s', '5m', '1h'")
    return sign * sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


def _stop_list(value: Any) -> Any:
    """A lone stop string is a list of one; the empty list means "no stop strings"."""
    return [value] if isinstance(value, str) else value


Duration = Annotated[float | None, BeforeValidator(parse_duration)]

#: The largest JSON schema a format may hold (as JSON text): far beyond real ones, short of a hostile one.
MAX_SCHEMA_BYTES = 256 * 1024


def _answer_format(value: Any) -> Any:
    """``"json"``, a JSON schema (an object), or the schema as JSON text (a flag's value)."""
    if isinstance(value, str) and value.strip() != "json":
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError('use "json" or a JSON schema (an object)') from None
    if isinstance(value, str):
        return "json"
    if not isinstance(value, dict):
        raise ValueError('use "json" or a JSON schema (an object)')
    try:
        size = len(json.dumps(value, ensure_ascii=False).encode())
    except (TypeError, ValueError):
        raise ValueError("the JSON schema is not JSON") from None
    if size > MAX_SCHEMA_BYTES:
        raise ValueError(f"the JSON schema is larger than {MAX_SCHEMA_BYTES // 1024} KiB")
    return value


AnswerFormat = Annotated[Literal["json"] | dict[str, Any] | None, BeforeValidator(_answer_format)]


def _with_synonym(synonym: str, **constraints: Any) -> Any:
    """An unset-by-default field that also accepts its Ollama spelling."""
    return Field(None, validation_alias=AliasChoices(SYNONYMS[synonym], synonym), **constraints)


class GenerationParameters(BaseModel):
    """How to sample; each value may change from one request to the next."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    temperature: float | None = Field(None, ge=0, description="0 means greedy decoding")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling mass")
    top_k: int | None = Field(None, ge=0, description="0 disables top-k")
    min_p: float | None = Field(None, ge=0, le=1, description="minimum probability relative to the top token")
    seed: int | None = Field(None, description="same seed, same output")
    repetition_penalty: float | None = _with_synonym(
        "repeat_penalty", gt=0, description="multiplicative penalty on repeated tokens; 1 is off")
    repeat_last_n: int | None = Field(
        None, ge=-1, description="how many of the latest tokens the repetition penalty looks back over; "
                                 "0 is off, -1 the whole context")
    presence_penalty: float | None = Field(
        None, ge=-2, le=2, description="OpenAI-style: subtracted once from every token already generated")
    frequency_penalty: float | None = Field(
        None, ge=-2, le=2, description="OpenAI-style: subtracted per occurrence of a generated token")
    stop: Annotated[list[Text] | None, BeforeValidator(_stop_list)] = Field(
        None, description="generation halts before any of these strings")
    max_new_tokens: int | None = _with_synonym(
        "num_predict", ge=-1, description="most tokens to generate; -1 is no limit")
    ctx: int | None = _with_synonym("num_ctx", ge=1, description="context window in tokens; older turns are dropped")
    json_mode: bool | None = Field(None, description="answer with one JSON object, enforced while decoding")
    format: AnswerFormat = Field(None, description='"json" or a JSON schema the answer must follow, enforced '
                                                   "while decoding (a flag takes JSON text or a file)")

    @model_validator(mode="before")
    @classmethod
    def _drop_ollama_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and OLLAMA_IGNORED_OPTIONS.intersection(data):
            ignored = sorted(OLLAMA_IGNORED_OPTIONS.intersection(data))
            log.warning("ignoring Ollama option(s) with no meaning here: %s", ", ".join(ignored))
            data = {key: value for key, value in data.items() if key not in OLLAMA_IGNORED_OPTIONS}
        return data


class Parameters(GenerationParameters):
    """Generation parameters plus how long the model stays loaded after a request."""

    keep_alive: Duration = Field(None, description="seconds (or '5m') to keep the model loaded; negative: forever")


Quantize = Literal["none", "8bit", "4bit", "auto"]
DType = Literal["auto", "float32", "float16", "bfloat16"]


#: The most replicas an alias may name.
MAX_UPSTREAMS = 16


def _upstream_urls(value: Any) -> Any:
    """One URL or a list of them, each http(s) with a host, at most :data:`MAX_UPSTREAMS`; kept without a
    trailing slash."""
    from urllib.parse import urlsplit

    urls = [value] if isinstance(value, str) else value
    if not isinstance(urls, list) or not urls or len(urls) > MAX_UPSTREAMS:
        raise ValueError(f"give one to {MAX_UPSTREAMS} base URLs")
    for url in urls:
        if not isinstance(url, str) or len(url) > 2048:
            raise ValueError("each upstream is a URL of at most 2048 characters")
        try:
            parts = urlsplit(url)
        except ValueError:
            raise ValueError(f"not a URL: {url[:200]!r}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"an upstream is an http(s) base URL such as http://127.0.0.1:8000/v1, not {url[:200]!r}")
    return [url.rstrip("/") for url in urls]


class VllmOptions(BaseModel):
    """vLLM's own knobs, for an alias whose ``engine`` is ``vllm`` (each becomes the flag of the same name)."""

    model_config = ConfigDict(extra="forbid")

    tensor_parallel_size: int | None = Field(None, ge=1, le=1024, description="GPUs each layer is split over")
    pipeline_parallel_size: int | None = Field(None, ge=1, le=1024, description="stages the layers are split into")
    distributed_executor_backend: Literal["mp", "ray"] | None = Field(
        None, description="mp (one machine) or ray (several machines, through a Ray cluster)")
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="share of each GPU's memory it takes")
    max_num_seqs: int | None = Field(None, ge=1, le=65536, description="most sequences in one batch")
    enforce_eager: bool | None = Field(None, description="no CUDA graphs: less memory, slower decoding")
    args: list[Text] | None = Field(None, max_length=64, description="more command-line arguments, passed as given")


class LoadOptions(BaseModel):
    """How to load the weights; a change here means loading the model again."""

    model_config = ConfigDict(extra="forbid")

    engine: Literal["transformers", "vllm"] | None = Field(
        None, description="transformers (in this process) or vllm (a vLLM server hllama starts and stops)")
    vllm: VllmOptions | None = Field(None, description="vLLM's knobs, when the engine is vllm")

    quantize: Quantize | None = Field(
        None, description="none | 8bit | 4bit (bitsandbytes) | auto: the best precision that fits")
    dtype: DType | None = Field(None, description="auto: the checkpoint's dtype where the hardware runs it "
                                                  "natively; else bf16 on a GPU, float32 on a CPU")
    device_map: Text | None = Field(None, description="accelerate device map, e.g. auto, cpu, cuda:0")
    trust_remote_code: bool | None = Field(None, description="run code shipped with the model repo")
    upstream: Annotated[list[Text] | None, BeforeValidator(_upstream_urls)] = Field(
        None, description="base URLs (ending in /v1) of OpenAI-compatible engines already running (vLLM, SGLang, "
                          "TGI, llama-server, another hllama) that serve the alias instead of a local model; "
                          "several are replicas")
    upstream_api_key_env: Text | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
        description="the environment variable that holds the upstreams' API key")

    @model_validator(mode="after")
    def _one_engine(self) -> LoadOptions:
        if self.engine == "vllm" and self.upstream:
            raise ValueError("give upstream (engines already running) or engine: vllm (one hllama starts), not both")
        return self


#: The lowest layer of every resolution: Ollama's defaults, so a drop-in behaves the same.
#: ``seed`` (random) and ``ctx`` (the model's own context length) stay unset.
BUILTIN_PARAMETERS = Parameters(
    temperature=0.8, top_p=0.9, top_k=40, min_p=0.0, repetition_penalty=1.0, repeat_last_n=64,
    presence_penalty=0.0, frequency_penalty=0.0, stop=[], max_new_tokens=-1, json_mode=False, keep_alive=300,
)
BUILTIN_LOAD = LoadOptions(engine="transformers", quantize="none", dtype="auto", device_map="auto",
                           trust_remote_code=False)
