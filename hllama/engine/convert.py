"""A GGUF file as a model folder transformers loads in a second: safetensors weights, config, tokenizer.

Loading a GGUF file dequantizes every tensor (7-14 s for a 135M model on two cores); loading the same weights
from safetensors maps them. The weights are written as the GGUF load made them (float32), so the folder's
model answers token for token as the GGUF file's did.
"""

from __future__ import annotations

from pathlib import Path


def gguf_to_safetensors(gguf: Path, out: Path, *, dtype: str = "float32") -> None:
    """Write the model in ``gguf`` into the folder ``out`` (which exists), its weights in ``dtype`` (float32: as the
    GGUF load computes with them; another is rounded from those)."""
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hllama.engine.loader import gguf_read_once

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
