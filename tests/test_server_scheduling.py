"""The scheduler behind the real server: budget, queue, disconnects, and a free event loop."""

import concurrent.futures
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hllama.cli import main
from hllama.config import load_settings

from .liveserver import live_server
from .tinymodel import CHATS, REPO_ID, endless_variant, install_into_cache

ENDLESS = {"num_predict": 20000, "num_ctx": 1000000, "temperature": 0}  # long enough to outlast any test


@pytest.fixture
def url(tiny_model_dir: Path, tiny_cache: Path, hllama_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    install_into_cache(endless_variant(tiny_model_dir, tmp_path / "endless"), tiny_cache,
                       repo_id="hllama-test/tiny-endless")
    assert main(["create", "--alias", "tiny", "--model", REPO_ID, "--temperature", "0"]) == 0
    assert main(["create", "--alias", "endless", "--model", "hllama-test/tiny-endless"]) == 0
    monkeypatch.setenv("HLLAMA_MAX_QUEUE", "1")
    monkeypatch.setenv("HLLAMA_NUM_PARALLEL", "1")  # one at a time: the next request queues
    with live_server(load_settings()) as base:
        yield base


def _endless(url: str, client: httpx.Client) -> tuple[httpx.Response, Iterator[str]]:
    """Start a long streamed answer and read its first line (keep the line iterator: dropping it closes)."""
    request = client.build_request("POST", f"{url}/api/generate",
                                   json={"model": "endless", "prompt": "hi", "options": ENDLESS})
    response = client.send(request, stream=True)
    lines = response.iter_lines()
    first = json.loads(next(lines))
    assert first["done"] is False, first
    return response, lines


def test_other_routes_answer_while_a_long_generation_runs(url: str):
    with httpx.Client(timeout=60) as client:
        response, lines = _endless(url, client)
        started = time.monotonic()
        assert httpx.get(f"{url}/api/version").status_code == 200
        assert {model["name"] for model in httpx.get(f"{url}/api/tags").json()["models"]} == {
            "tiny:latest", "endless:latest", f"{REPO_ID}:latest", "hllama-test/tiny-endless:latest"}
        assert httpx.get(f"{url}/api/ps").json()["models"][0]["name"] == "endless:latest"
        tiny = httpx.post(f"{url}/api/generate", json={"model": "tiny", "prompt": CHATS[3][0], "stream": False})
        assert tiny.json()["response"] == CHATS[3][1]  # another model answers meanwhile
        assert time.monotonic() - started < 5
        assert json.loads(next(lines))["done"] is False  # and the long one is still going
        response.close()


def test_a_full_queue_answers_503_and_a_disconnect_frees_the_model(url: str):
    with httpx.Client(timeout=60) as client, concurrent.futures.ThreadPoolExecutor() as pool:
        running, _lines = _endless(url, client)
        waiting = pool.submit(httpx.post, f"{url}/api/generate", timeout=60,
                              json={"model": "endless", "prompt": CHATS[2][0], "stream": False,
                                    "options": {"temperature": 0, "num_predict": 10}})
        time.sleep(0.5)  # the second request is now queued behind the first
        busy = httpx.post(f"{url}/api/generate", json={"model": "endless", "prompt": "x", "stream": False})
        assert busy.status_code == 503
        assert busy.json() == {"error": "server busy, please try again. maximum pending requests exceeded"}
        disconnected = time.monotonic()
        running.close()  # the client goes away mid-stream: its generation must stop
        answer = waiting.result()
        assert time.monotonic() - disconnected < 3  # far less than the thousands of tokens left
        assert answer.status_code == 200 and answer.json()["eval_count"] == 10


def test_a_seed_reproduces_while_other_requests_run(tiny_cache: Path, hllama_home: Path,
                                                    monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HLLAMA_NUM_PARALLEL", "3")
    assert main(["create", "--alias", "tiny", "--model", REPO_ID]) == 0
    seeded = {"model": "tiny", "prompt": "hi", "stream": False,
              "options": {"seed": 1234, "temperature": 1.2, "top_k": 0, "top_p": 1.0, "num_predict": 40}}
    with live_server(load_settings()) as url:
        alone = httpx.post(f"{url}/api/generate", json=seeded, timeout=60).json()["response"]
        with concurrent.futures.ThreadPoolExecutor() as pool:
            noise = [pool.submit(httpx.post, f"{url}/api/generate", timeout=60,
                                 json={**seeded, "options": {**seeded["options"], "seed": seed}})
                     for seed in (1, 2)]
            together = pool.submit(httpx.post, f"{url}/api/generate", json=seeded, timeout=60)
            assert together.result().json()["response"] == alone
            assert all(future.result().status_code == 200 for future in noise)


def test_models_are_evicted_to_stay_in_budget(tiny_model_dir: Path, tiny_cache: Path, hllama_home: Path,
                                              monkeypatch: pytest.MonkeyPatch):
    install_into_cache(tiny_model_dir, tiny_cache, repo_id="hllama-test/tiny-two")
    monkeypatch.setenv("HLLAMA_MEMORY_BUDGET", "100MB")  # each needs about 68 MB
    with live_server(load_settings()) as url:
        for model in (REPO_ID, "hllama-test/tiny-two", REPO_ID):
            reply = httpx.post(f"{url}/api/chat", timeout=60, json={
                "model": model, "stream": False, "options": {"temperature": 0},
                "messages": [{"role": "user", "content": CHATS[0][0]}]})
            assert reply.json()["message"]["content"] == CHATS[0][1]
            assert [entry["name"] for entry in httpx.get(f"{url}/api/ps").json()["models"]] == [f"{model}:latest"]


def test_a_model_larger_than_the_budget_is_a_clear_error(tiny_cache: Path, hllama_home: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    """Worded as Ollama words it, with Ollama's status (500), though nothing else is loaded: never blamed on
    busy models."""
    monkeypatch.setenv("HLLAMA_MEMORY_BUDGET", "10MB")
    with live_server(load_settings()) as url:
        response = httpx.post(f"{url}/api/generate", json={"model": REPO_ID, "prompt": "x"})
        openai = httpx.post(f"{url}/v1/chat/completions", json={
            "model": REPO_ID, "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == openai.status_code == 500
    expected = (f"model requires more system memory (64.9 MiB) than is available (9.5 MiB): the estimate for "
                f"'{REPO_ID}' at float32 with a 256-token context for each of 4 conversations, against "
                "HLLAMA_MEMORY_BUDGET")
    assert response.json() == {"error": expected}
    assert openai.json()["error"]["message"] == expected


def test_an_error_after_streaming_began_is_the_last_line():
    import asyncio

    from hllama.errors import ModelLoadError
    from hllama.server.streaming import Encoder, respond

    class Lines(Encoder):
        def piece(self, item):
            return ((json.dumps({"piece": item}) + "\n").encode(),)

        def error(self, message):
            return (json.dumps({"error": message}) + "\n").encode()

    async def events():
        yield "partial"
        raise ModelLoadError("the model went away")

    async def body():
        response = await respond(events(), Lines(), stream=True, resolved=_any_resolved())
        return [json.loads(line) async for line in _lines(response)]

    assert asyncio.run(body()) == [{"piece": "partial"}, {"error": "the model went away"}]


def _any_resolved():
    from hllama.aliases.resolve import Resolved
    from hllama.options import BUILTIN_LOAD, BUILTIN_PARAMETERS

    return Resolved(name="m", model="o/m", parameters=BUILTIN_PARAMETERS, load=BUILTIN_LOAD, sources={})


async def _lines(response):
    async for chunk in response.body_iterator:
        for line in chunk.decode().splitlines():
            yield line


def test_concurrent_requests_share_the_batch_and_each_gets_its_own_answer(tiny_cache: Path, hllama_home: Path,
                                                                          monkeypatch: pytest.MonkeyPatch):
    """Four streams decode together: each greedy answer is the one it gets alone; requests that fail (a prompt
    longer than the context, a broken template) fail alone; a client that leaves mid-stream frees its place
    at once for a waiting request while the others go on."""
    monkeypatch.setenv("HLLAMA_NUM_PARALLEL", "4")
    assert main(["create", "--alias", "tiny", "--model", REPO_ID, "--temperature", "0"]) == 0

    def ask(url: str, question: str) -> str:
        reply = httpx.post(f"{url}/api/chat", timeout=60, json={
            "model": "tiny", "stream": False, "messages": [{"role": "user", "content": question}]})
        return reply.json()["message"]["content"]

    questions = [question for question, _ in CHATS[:3]]
    with live_server(load_settings()) as url:
        alone = [ask(url, question) for question in questions]
        with httpx.Client(timeout=60) as client, concurrent.futures.ThreadPoolExecutor() as pool:
            request = client.build_request("POST", f"{url}/api/generate", json={
                "model": "tiny", "prompt": "hi", "options": {**ENDLESS, "num_ctx": 256, "num_predict": 200}})
            leaving = client.send(request, stream=True)
            assert json.loads(next(leaving.iter_lines()))["done"] is False
            together = [pool.submit(ask, url, question) for question in questions]
            failing = [httpx.post(f"{url}/api/generate", timeout=60, json={"model": "tiny", "prompt": "hi " * 400,
                                                                           "stream": False}),
                       httpx.post(f"{url}/api/generate", timeout=60, json={"model": "tiny", "prompt": "hi",
                                                                           "template": "{{ broken(", "stream": False})]
            assert [response.status_code for response in failing] == [400, 400]  # and the others go on
            leaving.close()
            waiting = pool.submit(ask, url, CHATS[3][0])  # the fifth: it takes the place the leaver gave up
            assert [future.result() for future in together] == alone
            assert waiting.result() == CHATS[3][1]
