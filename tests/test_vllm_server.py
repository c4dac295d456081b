"""The vLLM server hllama starts for an ``engine: vllm`` alias: its command line, and its life through the scheduler.

The life cycle runs against ``tests/fake_vllm`` (a stand-in that answers with its own command line); a real vLLM
runs in ``test_a_real_vllm_serves_an_alias`` only when ``HLLAMA_SLOW_TESTS=1`` (see scripts/setup-vllm.sh).
"""

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import ollama
import pytest
from pydantic import ValidationError

from hllama.aliases.resolve import Resolved
from hllama.backends.vllm import vllm_command
from hllama.config import load_settings
from hllama.errors import InvalidOption
from hllama.options import LoadOptions, Parameters

from .liveserver import live_server
from .tinymodel import REPO_ID

FAKE = Path(__file__).parent / "fake_vllm"

#: Read before each test's fixtures clear every HLLAMA_ variable.
SLOW = os.environ.get("HLLAMA_SLOW_TESTS") == "1"
VLLM_PYTHON = os.environ.get("HLLAMA_VLLM_PYTHON", sys.executable)
VLLM_MODEL = Path(os.environ.get("HLLAMA_VLLM_MODEL", Path.home() / ".cache/hllama-bench/SmolLM2-135M-Instruct"))


def _resolved(load: dict, **parameters) -> Resolved:
    return Resolved(name="big", model="org/big", revision="v2", parameters=Parameters(**parameters),
                    load=LoadOptions(engine="vllm", **load), sources={})


def test_the_alias_becomes_vllms_command_line():
    resolved = _resolved({"quantize": "4bit", "dtype": "bfloat16", "trust_remote_code": True, "vllm": {
        "tensor_parallel_size": 4, "pipeline_parallel_size": 2, "distributed_executor_backend": "ray",
        "gpu_memory_utilization": 0.8, "max_num_seqs": 64, "enforce_eager": True,
        "args": ["--swap-space", "4"]}}, num_ctx=8192)
    assert vllm_command(resolved, port=9000, python="/envs/vllm/bin/python") == [
        "/envs/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "org/big",
        "--host", "127.0.0.1", "--port", "9000", "--dtype", "bfloat16", "--revision", "v2",
        "--quantization", "bitsandbytes", "--max-model-len", "8192", "--trust-remote-code",
        "--tensor-parallel-size", "4", "--pipeline-parallel-size", "2", "--distributed-executor-backend", "ray",
        "--gpu-memory-utilization", "0.8", "--max-num-seqs", "64", "--enforce-eager", "--swap-space", "4"]
    assert vllm_command(_resolved({"quantize": "8bit"}), port=1)[-2:] == ["--quantization", "fp8"]
    with pytest.raises(InvalidOption, match="quantize: auto"):
        vllm_command(_resolved({"quantize": "auto"}), port=1)


def test_impossible_engine_settings_are_refused():
    with pytest.raises(ValidationError, match="not both"):
        LoadOptions(engine="vllm", upstream=["http://gpu:8000/v1"])
    with pytest.raises(ValidationError, match="distributed_executor_backend"):
        LoadOptions(engine="vllm", vllm={"distributed_executor_backend": "slurm"})


@pytest.fixture
def fake_vllm(monkeypatch, modelfiles: Path, tiny_cache: Path):
    """The stand-in on the interpreter's path, and a server whose aliases use it."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FAKE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("HLLAMA_VLLM_PYTHON", sys.executable)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    return modelfiles


def _alias(modelfiles: Path, name: str, model: str, **load) -> None:
    (modelfiles / f"{name}.yaml").write_text(json.dumps({"from": model, "load": {"engine": "vllm", **load},
                                                         "parameters": {"keep_alive": -1}}))


def test_a_managed_server_starts_on_first_use_and_stops_with_its_model(fake_vllm: Path):
    _alias(fake_vllm, "served", REPO_ID, vllm={"max_num_seqs": 8})
    with live_server(load_settings()) as url:
        reply = ollama.Client(host=url).chat("served", messages=[{"role": "user", "content": "hi"}])
        command = reply.message.content.split()
        assert command[:2] == ["--model", REPO_ID] and command[-2:] == ["--max-num-seqs", "8"]
        assert reply.eval_count == len(command) and reply.prompt_eval_count == 7
        [running] = httpx.get(f"{url}/api/ps").json()["models"]
        assert running["name"] == "served:latest" and running["size"] > 2**30  # weights + 1 GiB of KV cache
        log = (load_settings().home / "logs" / "vllm-served.log")
        assert log.exists()

        _alias(fake_vllm, "served", REPO_ID, vllm={"max_num_seqs": 16})  # a load setting changed: a new server
        deadline = time.monotonic() + 10
        while "16" not in (answer := ollama.Client(host=url).chat(
                "served", messages=[{"role": "user", "content": "hi"}]).message.content):
            assert time.monotonic() < deadline, answer
            time.sleep(0.2)
        assert len(httpx.get(f"{url}/api/ps").json()["models"]) == 1  # the old one was stopped

        unloaded = httpx.post(f"{url}/api/generate", json={"model": "served", "keep_alive": 0}, timeout=60)
        assert unloaded.status_code == 200 and httpx.get(f"{url}/api/ps").json()["models"] == []


def test_ps_shows_a_server_on_its_way_in(fake_vllm: Path):
    _alias(fake_vllm, "slow", REPO_ID, vllm={"args": ["--start-delay", "5"]})
    with live_server(load_settings(), watch=False) as url, ThreadPoolExecutor(1) as pool:
        answer = pool.submit(ollama.Client(host=url).chat, "slow", messages=[{"role": "user", "content": "hi"}])
        deadline = time.monotonic() + 20
        while not (models := httpx.get(f"{url}/api/ps").json()["models"]) or "Loading weights" not in \
                models[0]["loading"]["status"]:
            assert time.monotonic() < deadline, models
            time.sleep(0.2)
        assert models[0]["name"] == "slow:latest" and models[0]["loading"]["status"].startswith("starting vLLM (")
        assert "--start-delay" in answer.result(timeout=60).message.content
        [running] = httpx.get(f"{url}/api/ps").json()["models"]
        assert "loading" not in running


def test_a_client_that_leaves_stops_the_engine(fake_vllm: Path):
    _alias(fake_vllm, "chatty", REPO_ID, vllm={"args": ["--chunk-delay", "0.05"]})
    with live_server(load_settings(), watch=False) as url:
        with httpx.stream("POST", f"{url}/api/chat", json={"model": "chatty", "messages": [
                {"role": "user", "content": "hi"}]}, timeout=60) as response:
            lines = response.iter_lines()
            assert json.loads(next(lines))["message"]["content"] and json.loads(next(lines))["done"] is False
        log = load_settings().home / "logs" / "vllm-chatty.log"
        deadline = time.monotonic() + 10
        while "the client left" not in log.read_text():
            assert time.monotonic() < deadline, "the engine kept generating for a client that left"
            time.sleep(0.1)


def test_a_server_that_fails_to_start_says_why(fake_vllm: Path):
    _alias(fake_vllm, "broken", REPO_ID, vllm={"args": ["--fail-to-start"]})
    with live_server(load_settings(), watch=False) as url:
        response = httpx.post(f"{url}/api/chat", json={"model": "broken", "messages": [], "stream": False},
                              timeout=60)
    assert response.status_code == 500
    assert "vLLM exited with status 3 while starting" in response.json()["error"]
    assert "this model cannot be loaded" in response.json()["error"]


@pytest.mark.skipif(not SLOW, reason="starts a real vLLM (HLLAMA_SLOW_TESTS=1)")
def test_a_real_vllm_serves_an_alias(modelfiles: Path, monkeypatch):
    """Needs scripts/setup-vllm.sh: vLLM in its own environment (HLLAMA_VLLM_PYTHON) and SmolLM2 converted."""
    monkeypatch.setenv("HLLAMA_VLLM_PYTHON", VLLM_PYTHON)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    (modelfiles / "smol.yaml").write_text(json.dumps({"from": str(VLLM_MODEL), "load": {"engine": "vllm"},
                                                      "parameters": {"temperature": 0, "num_ctx": 2048}}))
    with live_server(load_settings(), watch=False) as url:
        client = ollama.Client(host=url, timeout=900)
        reply = client.chat("smol", messages=[{"role": "user", "content": "What is the capital of France?"}],
                            options={"num_predict": 20})
        assert reply.message.content and reply.eval_count == 20 and reply.done_reason == "length"
        schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        shaped = client.chat("smol", messages=[{"role": "user", "content": "Name a city."}], format=schema)
        assert isinstance(json.loads(shaped.message.content)["city"], str)
