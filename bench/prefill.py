"""Long prompts: what making their one forward pass cancellable costs, how fast a cancel stops it, and
what reusing a conversation's KV cache saves.

    python bench/prefill.py [--tokens 2048,8192] [--dtype auto|float32|bfloat16] [--quantize none|8bit|4bit]

Builds a random-weight model of SmolLM2-135M's shape (30 layers, width 576, 9 heads, 3 KV heads; speed
does not depend on the weights) and loads it through hllama's loader, which hooks every decoder layer
so that a cancel stops a pass at the next layer. For each prompt length, in one run: the time to the
first token with the hooks and without them (the same weights), and the time from a cancel, 30 ms into
reading the prompt, to the end of the generation, with and without them. Then the first token of a
turn that follows a 1,500-token conversation, read from scratch and from the cache its last answer
left. Prints the memory budget hllama detects (NVML on a GPU) too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="2048,8192", help="prompt lengths, comma-separated")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--quantize", default="none", choices=["none", "8bit", "4bit"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--follow-up", type=int, default=1500, help="length of the conversation a turn follows")
    args = parser.parse_args()

    from hllama.aliases.registry import Registry
    from hllama.aliases.resolve import Overrides, resolve
    from hllama.config import Settings
    from hllama.engine import load_model
    from hllama.engine.cancel import make_cancellable
    from hllama.models.hardware import memory_budget
    from hllama.units import format_bytes

    lengths = [int(text) for text in args.tokens.split(",")]
    work = Path(tempfile.mkdtemp(prefix="hllama-prefill-"))
    folder = _model(work, max(*lengths, args.follow_up + 64) + 64)
    settings = Settings(home=work / "home")
    budget = memory_budget(settings)
    print(f"memory budget: {format_bytes(budget.bytes)} ({budget.source}, {budget.device})")
    resolved = resolve(str(folder), settings=settings, registry=Registry(work), cli=Overrides.model_validate(
        {"parameters": {"temperature": 0}, "load": {"dtype": args.dtype, "quantize": args.quantize}}))
    loaded = load_model(resolved, budget=budget, force=True)
    print(f"model: SmolLM2-135M shape, random weights, {loaded.precision} on {loaded.model.device}")
    print(f"{'prompt':>8}{'hooked ms':>11}{'plain ms':>10}{'ratio':>7}{'cancel ms':>11}{'plain cancel ms':>17}")
    for length in lengths:
        ids = [(index * 7919) % (loaded.model.config.vocab_size - 10) + 5 for index in range(length)]
        hooked, hooked_cancel = _time(loaded, ids, args.runs), _cancel_ms(loaded, ids)
        for handle in loaded.cancel_hooks:  # the same weights, without the hooks
            handle.remove()
        plain, plain_cancel = _time(loaded, ids, args.runs), _cancel_ms(loaded, ids)
        loaded.cancel_hooks = make_cancellable(loaded.model)
        print(f"{length:>8}{hooked * 1e3:>11.1f}{plain * 1e3:>10.1f}{hooked / plain:>7.3f}{hooked_cancel:>11.1f}"
              f"{plain_cancel:>17.1f}")
    cold, warm = _follow_up(loaded, args.follow_up, args.runs)
    print(f"a turn after a {args.follow_up}-token conversation, first token: cold {cold * 1e3:.1f} ms, "
          f"reusing its cache {warm * 1e3:.1f} ms ({warm / cold:.3f} of cold)")


def _model(work: Path, context: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tinymodel import build_tokenizer

    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=context,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    return work / "model"


def _time(loaded, ids: list[int], runs: int) -> float:
    """Seconds to the first token: the median of ``runs``, after a warm-up."""
    from hllama.engine import stream
    from hllama.options import Parameters

    times = []
    for _ in range(runs + 1):
        loaded.prefixes.clear()  # every run reads the whole prompt
        _sync(loaded)
        started = time.perf_counter()
        list(stream(loaded, ids, Parameters(temperature=0, max_new_tokens=1)))
        _sync(loaded)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def _follow_up(loaded, length: int, runs: int) -> tuple[float, float]:
    """Seconds to the first token of a new 30-token message after ``length`` tokens of conversation: read from
    scratch, and from the cache the conversation's last answer left (medians)."""
    from hllama.engine import stream
    from hllama.options import Parameters

    vocabulary = loaded.model.config.vocab_size - 10
    history = [(index * 7919) % vocabulary + 5 for index in range(length)]
    colds, warms = [], []
    for _ in range(runs + 1):
        loaded.prefixes.clear()
        *_, answer = stream(loaded, history, Parameters(temperature=0, max_new_tokens=8))
        follow_up = [*history, *answer.generated_ids, *((index * 31) % vocabulary + 5 for index in range(30))]
        for kept, times in ((True, warms), (False, colds)):
            if not kept:
                loaded.prefixes.clear()
            _sync(loaded)
            started = time.perf_counter()
            list(stream(loaded, follow_up, Parameters(temperature=0, max_new_tokens=1)))
            _sync(loaded)
            times.append(time.perf_counter() - started)
    return statistics.median(colds[1:]), statistics.median(warms[1:])


def _cancel_ms(loaded, ids: list[int]) -> float:
    """From a cancel, 30 ms into reading the prompt, until the generation has ended."""
    from hllama.engine import stream
    from hllama.options import Parameters

    cancel = threading.Event()
    stopped = []

    def later() -> None:
        time.sleep(0.03)
        cancel.set()
        stopped.append(time.perf_counter())

    timer = threading.Thread(target=later)
    loaded.prefixes.clear()
    timer.start()
    list(stream(loaded, ids, Parameters(temperature=0, max_new_tokens=1), cancel=cancel))
    _sync(loaded)
    ended = time.perf_counter()
    timer.join()
    return max(ended - stopped[0], 0.0) * 1e3


def _sync(loaded) -> None:
    import torch

    if loaded.model.device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
