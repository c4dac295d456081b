"""Server overhead, measured in one run: direct ``model.generate`` against streaming through ``/api/generate``.

    python bench/serve.py [--model PATH_OR_REPO] [--tokens N] [--runs R]

Without ``--model`` it builds the tiny test model, in a variant that never writes its end token, so every
run generates exactly N tokens both ways. The server runs as a real ``hllama serve`` subprocess on
127.0.0.1 with its own home. Prints tokens/s and time to first token both ways, aggregate tokens/s
with 1, 2, 4 and 8 concurrent clients, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="local model folder or cached Hub repo id (default: the tiny model)")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--parallel", type=int, default=1, help="the server's HLLAMA_NUM_PARALLEL (default 1)")
    parser.add_argument("--wide", action="store_true",
                        help="use a wider random model (35M parameters) instead of the tiny one")
    parser.add_argument("--checkpoint-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="what the built model is stored in (both sides load it with dtype auto)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hllama-bench-"))
    model = args.model or str(_wide_endless(work, args.checkpoint_dtype) if args.wide else _tiny_endless(work))
    prompt = "Tell me a story."

    direct_rate, direct_ttft = _direct(model, prompt, args.tokens, args.runs)
    with _server(work, model, args.parallel) as url:
        server_rate, server_ttft = _through_server(url, prompt, args.tokens, args.runs)
        aggregate = {clients: _concurrent(url, prompt, args.tokens, clients) for clients in (1, 2, 4, 8)}

    print(f"model: {model}   tokens per answer: {args.tokens}   runs: {args.runs} (medians)   "
          f"num_parallel: {args.parallel}")
    print(f"{'':32}{'direct':>12}{'server':>12}{'ratio':>10}")
    print(f"{'tokens/s':32}{direct_rate:12.1f}{server_rate:12.1f}{server_rate / direct_rate:10.3f}")
    print(f"{'time to first token (ms)':32}{direct_ttft * 1e3:12.1f}{server_ttft * 1e3:12.1f}"
          f"{(server_ttft - direct_ttft) * 1e3:+9.1f}ms")
    print(f"{'concurrent clients':32}{'agg tok/s':>12}{'vs 1':>12}")
    for clients, rate in aggregate.items():
        print(f"{clients:<32}{rate:12.1f}{rate / aggregate[1]:12.2f}")


def _tiny_endless(work: Path) -> Path:
    from tests.tinymodel import build_model, endless_variant

    return endless_variant(build_model(work / "tiny"), work / "tiny-endless")


def _wide_endless(work: Path, dtype: str) -> Path:
    """Random weights, 8 layers of width 512: per-token work closer to a real model's, on this CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tinymodel import build_tokenizer, endless_variant

    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=4096,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    LlamaForCausalLM(config).to(getattr(torch, dtype)).save_pretrained(work / "wide")
    tokenizer.save_pretrained(work / "wide")
    return endless_variant(work / "wide", work / "wide-endless")


def _direct(model: str, prompt: str, tokens: int, runs: int) -> tuple[float, float]:
    """Plain transformers at the checkpoint's dtype: the prompt through the chat template, greedy ``generate``
    of ``tokens`` tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.generation.streamers import BaseStreamer

    tokenizer = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype="auto").eval()
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    config = GenerationConfig(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                              eos_token_id=lm.generation_config.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)

    class FirstToken(BaseStreamer):
        def __init__(self) -> None:
            self.calls, self.first = 0, None

        def put(self, value) -> None:
            self.calls += 1
            if self.calls == 2:
                self.first = time.perf_counter()

        def end(self) -> None:
            pass

    rates, ttfts = [], []
    for _ in range(runs + 1):
        streamer = FirstToken()
        started = time.perf_counter()
        lm.generate(**ids, generation_config=config, streamer=streamer)
        ended = time.perf_counter()
        rates.append((tokens - 1) / (ended - streamer.first))
        ttfts.append(streamer.first - started)
    return statistics.median(rates[1:]), statistics.median(ttfts[1:])  # the first run warms up


@contextmanager
def _server(work: Path, model: str, parallel: int) -> Iterator[str]:
    from tests.liveserver import serve_process

    env = {**os.environ, "HLLAMA_HOME": str(work / "home"), "HLLAMA_NUM_PARALLEL": str(parallel)}
    with serve_process(env) as (_, url):
        httpx.post(f"{url}/api/generate", json={"model": model, "prompt": ""}, timeout=300)  # load it first
        yield url


def _request(url: str, model: str, prompt: str, tokens: int) -> dict:
    return {"model": model, "prompt": prompt, "options": {"temperature": 0, "num_predict": tokens}}


_local = threading.local()


def _client() -> httpx.Client:
    """One client per thread, made before timing starts (a new client costs ~20 ms of TLS set-up alone)."""
    if not hasattr(_local, "client"):
        _local.client = httpx.Client(timeout=300)
    return _local.client


def _stream_once(url: str, body: dict) -> tuple[float, float, int]:
    """(seconds to the first token, seconds from first to last, tokens generated)."""
    client = _client()
    started = time.perf_counter()
    first = last = None
    count = 0
    with client.stream("POST", f"{url}/api/generate", json=body) as response:
        for line in response.iter_lines():
            chunk = json.loads(line)
            now = time.perf_counter()
            if first is None:
                first = now
            last = now
            if chunk.get("done"):
                count = chunk["eval_count"]
    return first - started, last - first, count


def _through_server(url: str, prompt: str, tokens: int, runs: int) -> tuple[float, float]:
    body = _request(url, _model_of(url), prompt, tokens)
    results = [_stream_once(url, body) for _ in range(runs + 1)][1:]
    return (statistics.median((count - 1) / span for _, span, count in results),
            statistics.median(ttft for ttft, _, _ in results))


def _concurrent(url: str, prompt: str, tokens: int, clients: int) -> float:
    body = _request(url, _model_of(url), prompt, tokens)
    barrier = threading.Barrier(clients)

    def one(_: int) -> int:
        _client()
        barrier.wait()
        return _stream_once(url, body)[2]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(one, range(clients)))
    return total / (time.perf_counter() - started)


def _model_of(url: str) -> str:
    return httpx.get(f"{url}/api/ps").json()["models"][0]["model"].removesuffix(":latest")


if __name__ == "__main__":
    main()
