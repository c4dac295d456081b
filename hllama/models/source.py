"""Where a model's files are (a folder, a ``.gguf`` file, the Hub cache, the embedded default), whether they are
whole, what kind of model they hold, and how it will load within a budget: all read from files, nothing loaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hllama.errors import ModelNotDownloaded, NoModelAtPath
from hllama.models import embedded, hub
from hllama.models.footprint import Plan, local_footprint, plan
from hllama.models.hardware import Budget
from hllama.names import is_local_path, is_model_path
from hllama.options import LoadOptions


@dataclass(frozen=True)
class ModelSource:
    """Where the files are: a folder, and the GGUF file inside it when that is what was named."""

    folder: Path
    gguf_file: str | None = None


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


def plan_load(source: ModelSource, budget: Budget, *, load: LoadOptions, context: int | None) -> Plan:
    """How the model in ``source`` will load with ``load``'s settings and a ``context`` window (None: its own)."""
    footprint = local_footprint(source.folder, gguf_file=source.gguf_file)
    return plan(footprint, load=load, context=context, budget=budget)


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
