"""How close the memory estimate is to what loading really takes.

    python bench/estimate.py [MODEL_FOLDER]      (default: the tiny test model, built on the spot)

Prints, for one model loaded at float32 on the CPU: the weights estimate against transformers'
own footprint, and the full estimate against the growth of this process's RSS during the load.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import torch  # noqa: F401  (imported before measuring, so its own memory is not counted)
    from transformers import AutoModelForCausalLM

    from hllama.footprint import estimate, local_footprint

    if len(sys.argv) > 1:
        folder = Path(sys.argv[1])
    else:
        from tests.tinymodel import build_model

        folder = build_model(Path(tempfile.mkdtemp()) / "tiny")
    footprint = local_footprint(folder)
    guess = estimate(footprint, precision="float32", context=None, device="cpu")
    process = psutil.Process(os.getpid())
    gc.collect()
    before = process.memory_info().rss
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    grown = process.memory_info().rss - before
    measured = model.get_memory_footprint()
    print(f"model: {folder}")
    print(f"parameters: {footprint.parameters:,}")
    print(f"weights: estimate {guess.weights:,} B, measured (get_memory_footprint) {measured:,} B, "
          f"ratio {guess.weights / measured:.3f}")
    print(f"total: estimate {guess.total:,} B (weights + KV {guess.kv_cache:,} + overhead {guess.overhead:,}), "
          f"RSS growth during load {grown:,} B, ratio {guess.total / max(grown, 1):.2f}")
    print(f"rule of thumb (1.5 x files): {guess.rule_of_thumb:,} B, ratio to measured weights "
          f"{guess.rule_of_thumb / measured:.2f}")


if __name__ == "__main__":
    main()
