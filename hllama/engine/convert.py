"""A GGUF file as a model folder transformers loads in a second: safetensors weights, config, tokenizer.

Loading a GGUF file dequantizes every tensor (7-14 s for a 135M model on two cores); loading the same weights
from safetensors maps them. The weights are written as the GGUF load made them (float32), so the folder's
model answers token for token as the GGUF file's did.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hllama.progress import report_progress


def gguf_to_safetensors(gguf: Path, out: Path, *, dtype: str = "float32") -> None:
    """Write the model in ``gguf`` into the folder ``out`` (which exists), its weights in ``dtype`` (float32: as the
    GGUF load computes with them; another is rounded from those)."""
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with gguf_read_once():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))
    config = model.config
    # transformers marks a GGUF load as quantized, which its own saving refuses: the weights are plain tensors now
    del config.quantization_config
    config.architectures = [type(model).__name__]  # a GGUF file's config does not name it
    config.dtype = dtype
    config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})  # tied weights stored once
    tokenizer.save_pretrained(out)


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
