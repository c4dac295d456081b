"""Aliases served by an OpenAI-compatible engine already running: here, a second hllama server on the tiny models."""

import asyncio
import json
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from hllama.aliases.resolve import Resolved
from hllama.backends.openai_wire import _wire_messages, completion_body, request_body
from hllama.backends.upstream import Upstream
from hllama.config import Settings, load_settings
from hllama.conversation import ANY_OBJECT, Pattern
from hllama.errors import InvalidOption
from hllama.options import LoadOptions, Parameters

from .liveserver import free_port, live_server
from .tinymodel import CHATS, REPO_ID, TOOL_REPO_ID, WEATHER_QUESTION, WEATHER_TOOL, install_into_cache

GREEDY = {"temperature": 0}
ASK = [{"role": "user", "content": CHATS[0][0]}]


@pytest.fixture
def engine(tiny_cache: Path, tool_model_dir: Path, tmp_path: Path):
    """The engine already running: another hllama, with a home of its own."""
    install_into_cache(tool_model_dir, tiny_cache, repo_id=TOOL_REPO_ID)
    with live_server(Settings(home=tmp_path / "engine-home"), watch=False) as url:
        yield url


def _alias(modelfiles: Path, name: str, model: str, upstream: list[str], **extra) -> None:
    (modelfiles / f"{name}.yaml").write_text(json.dumps({"from": model, "load": {"upstream": upstream}, **extra}))


@pytest.fixture
def front(engine: str, modelfiles: Path):
    """hllama in front: aliases on the engine (one with a dead replica first), and the local tiny model."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    _alias(modelfiles, "relayed", REPO_ID, [dead, f"{engine}/v1"], parameters={"temperature": 0})
    _alias(modelfiles, "relayed-tools", TOOL_REPO_ID, [f"{engine}/v1"])
    _alias(modelfiles, "nowhere", REPO_ID, [dead])
    with live_server(load_settings(), watch=False) as url:
        yield url


def test_an_alias_on_an_upstream_answers_as_the_engine_does(engine: str, front: str):
    direct = ollama.Client(host=engine).chat(REPO_ID, messages=ASK, options=GREEDY)
    relayed = ollama.Client(host=front).chat("relayed", messages=ASK)  # greedy from the alias
    assert relayed.message.content == direct.message.content == CHATS[0][1]
    assert relayed.eval_count == direct.eval_count
    assert 1 <= relayed.prompt_eval_count <= direct.prompt_eval_count  # the engine's cache of the same prompt counts
    assert relayed.done_reason == "stop" and relayed.total_duration > relayed.eval_duration > 0
    chunks = list(ollama.Client(host=front).chat("relayed", messages=ASK, stream=True))
    assert "".join(chunk.message.content for chunk in chunks) == CHATS[0][1] and len(chunks) > 2
    assert chunks[-1].done and chunks[-1].eval_count == direct.eval_count
    client = openai.OpenAI(base_url=f"{front}/v1", api_key="unused")
    answer = client.chat.completions.create(model="relayed", messages=ASK)
    assert answer.choices[0].message.content == CHATS[0][1] and answer.usage.completion_tokens == direct.eval_count
    streamed = client.chat.completions.create(model="relayed", messages=ASK, stream=True,
                                              stream_options={"include_usage": True})
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices) == CHATS[0][1]


def test_request_options_reach_the_engine_above_the_alias(front: str):
    short = ollama.Client(host=front).chat("relayed", messages=ASK, options={"num_predict": 3})
    assert short.done_reason == "length" and short.eval_count == 3
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"]}
    shaped = ollama.Client(host=front).chat("relayed", messages=ASK, format=schema)
    assert json.loads(shaped.message.content)["answer"] in ("yes", "no")
    logprobs = httpx.post(f"{front}/v1/chat/completions", json={"model": "relayed", "messages": ASK, "logprobs": True,
                                                                 "top_logprobs": 2, "max_tokens": 4}, timeout=60)
    items = logprobs.json()["choices"][0]["logprobs"]["content"]
    assert len(items) == 4 and all(len(item["top_logprobs"]) == 2 and item["logprob"] <= 0 for item in items)


def test_tool_calls_come_back_from_the_engine(front: str):
    ask = [{"role": "user", "content": WEATHER_QUESTION}]
    reply = ollama.Client(host=front).chat("relayed-tools", messages=ask, tools=[WEATHER_TOOL], options=GREEDY)
    [call] = reply.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    assert reply.message.content == ""


def test_raw_prompts_and_embeddings_go_to_the_engine(engine: str, front: str):
    # a raw prompt goes to the engine's /v1/completions as it is (vLLM's takes it raw; hllama's, like Ollama's,
    # puts it through the chat template: what it answers there is what the alias must answer)
    direct = openai.OpenAI(base_url=f"{engine}/v1", api_key="unused").completions.create(
        model=REPO_ID, prompt=CHATS[2][0], temperature=0, max_tokens=40)
    relayed = ollama.Client(host=front).generate("relayed", CHATS[2][0], raw=True)
    assert relayed.response == direct.choices[0].text == CHATS[2][1]
    assert relayed.eval_count == direct.usage.completion_tokens
    streamed = list(ollama.Client(host=front).generate("relayed", CHATS[2][0], raw=True, stream=True))
    assert "".join(chunk.response for chunk in streamed) == CHATS[2][1]
    vectors = ollama.Client(host=engine).embed(REPO_ID, ["a", "b c"]).embeddings
    relayed_vectors = ollama.Client(host=front).embed("relayed", ["a", "b c"]).embeddings
    assert len(relayed_vectors) == 2 and relayed_vectors[0] == pytest.approx(vectors[0], abs=1e-5)


def test_what_the_engine_cannot_do_is_refused_by_name(front: str):
    too_wide = httpx.post(f"{front}/api/chat", json={"model": "relayed", "messages": ASK, "stream": False,
                                                     "options": {"num_ctx": 512}}, timeout=60)
    assert too_wide.status_code == 400 and too_wide.json()["error"].startswith("num_ctx:")
    continued = httpx.post(f"{front}/api/generate", json={"model": "relayed", "prompt": "hi", "context": [1, 2],
                                                          "stream": False}, timeout=60)
    assert continued.status_code == 400 and "does not support context" in continued.json()["error"]


def test_an_unreachable_upstream_is_a_502_and_others_keep_working(front: str):
    response = httpx.post(f"{front}/api/chat", json={"model": "nowhere", "messages": ASK, "stream": False}, timeout=60)
    assert response.status_code == 502
    assert response.json()["error"].startswith("the engine serving 'nowhere' is unavailable: http://127.0.0.1:")
    streamed = httpx.post(f"{front}/api/chat", json={"model": "nowhere", "messages": ASK}, timeout=60)
    assert streamed.status_code == 502  # refused before the stream begins
    local = ollama.Client(host=front).chat(REPO_ID, messages=ASK, options=GREEDY)
    assert local.message.content == CHATS[0][1]
    assert ollama.Client(host=front).chat("relayed", messages=ASK).message.content == CHATS[0][1]


def _resolved(**parameters) -> Resolved:
    return Resolved(name="big", model="org/big", parameters=Parameters(**parameters),
                    load=LoadOptions(upstream=["http://gpu:8000/v1"]), sources={})


def test_settings_go_to_the_engine_by_its_names():
    body = request_body(_resolved(temperature=0.2, top_k=5, min_p=0.1, repeat_penalty=1.1, num_predict=9, seed=3,
                                  stop=["x"], presence_penalty=0.5), [{"role": "user", "content": "hi"}],
                        logprobs=2, think="high", tools=[WEATHER_TOOL], tool_choice="get_weather")
    assert body["model"] == "org/big" and body["stream"] and body["stream_options"] == {"include_usage": True}
    assert {key: body[key] for key in ("temperature", "top_k", "min_p", "repetition_penalty", "max_tokens", "seed",
                                       "stop", "presence_penalty", "top_logprobs")} == {
        "temperature": 0.2, "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1, "max_tokens": 9, "seed": 3,
        "stop": ["x"], "presence_penalty": 0.5, "top_logprobs": 2}
    assert body["chat_template_kwargs"] == {"enable_thinking": True} and body["reasoning_effort"] == "high"
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert "max_tokens" not in request_body(_resolved(num_predict=-1), [])
    assert request_body(_resolved(), [], structure=ANY_OBJECT)["response_format"] == {"type": "json_object"}
    assert request_body(_resolved(), [], structure=Pattern("choice", '["a", "b"]'))["structured_outputs"] == {
        "choice": ["a", "b"]}
    assert request_body(_resolved(), [], think=False)["chat_template_kwargs"] == {"enable_thinking": False}
    with pytest.raises(InvalidOption, match="^num_ctx:"):
        request_body(_resolved(num_ctx=4096), [])
    # a raw prompt to a vLLM hllama started with that context goes through, with the same settings
    raw = completion_body(_resolved(num_ctx=4096, temperature=0.2), "hi", suffix="end", logprobs=1, context=4096)
    assert raw["prompt"] == "hi" and raw["suffix"] == "end" and raw["logprobs"] == 1 and raw["temperature"] == 0.2
    assert "messages" not in raw and raw["stream"]
    with pytest.raises(InvalidOption, match="^num_ctx:"):
        completion_body(_resolved(num_ctx=4096), "hi")


def test_calls_and_their_results_are_matched_by_id():
    wired = _wire_messages([
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"type": "function", "function": {"name": "get_time", "arguments": {}}}]},
        {"role": "tool", "content": "12:00", "name": "get_time"},
        {"role": "tool", "content": "sunny", "name": "get_weather"}])
    calls = wired[1]["tool_calls"]
    assert calls[0]["function"]["arguments"] == '{"city": "Paris"}'
    assert wired[2]["tool_call_id"] == calls[1]["id"] and wired[3]["tool_call_id"] == calls[0]["id"]


def test_requests_go_to_the_replica_with_the_fewest_in_flight():
    upstream = Upstream.of(Resolved(name="big", model="org/big", parameters=Parameters(), sources={},
                                    load=LoadOptions(upstream=["http://a/v1", "http://b/v1", "http://c/v1"])))
    upstream.replicas[0].in_flight, upstream.replicas[1].in_flight, upstream.replicas[2].in_flight = 3, 1, 2
    assert asyncio.run(upstream._pick(exclude=[])).url == "http://b/v1"
    assert asyncio.run(upstream._pick(exclude=["http://b/v1"])).url == "http://c/v1"
    upstream.replicas[2].down_since = float("inf")  # failed just now: skipped until checked again
    assert asyncio.run(upstream._pick(exclude=["http://b/v1"])).url == "http://a/v1"


def test_upstream_urls_are_checked():
    with pytest.raises(ValueError, match="http"):
        LoadOptions(upstream=["file:///etc/passwd"])
    with pytest.raises(ValueError, match="one to 16"):
        LoadOptions(upstream=[])
    assert LoadOptions(upstream="http://gpu:8000/v1/").upstream == ["http://gpu:8000/v1"]


def test_list_and_ps_show_an_upstream_alias(front: str, capsys):
    from hllama.cli import main

    assert ollama.Client(host=front).chat("relayed", messages=ASK).message.content == CHATS[0][1]
    [running] = [model for model in httpx.get(f"{front}/api/ps").json()["models"] if model["name"] == "relayed:latest"]
    assert running["size"] == 0 and running["size_vram"] == 0  # nothing of it lives here
    names = [model["name"] for model in httpx.get(f"{front}/api/tags").json()["models"]]
    assert {"relayed:latest", "nowhere:latest"} <= set(names)
    capsys.readouterr()
    assert main(["list"]) == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("nowhere")]
    assert "served by http://127.0.0.1:" in line


def test_show_says_what_the_engine_reports(engine: str, front: str):
    info = ollama.Client(host=front).show("relayed").modelinfo
    assert info["upstream.url"] == f"{engine}/v1"
    assert info["upstream.owned_by"] == "hllama-test"  # the repo's owner, as hllama's /v1/models says
    assert ollama.Client(host=front).show("nowhere").modelinfo["upstream.reachable"] is False


def test_run_on_an_upstream_alias(front: str, capsys):
    from hllama.cli import main

    capsys.readouterr()
    assert main(["run", "relayed", CHATS[0][0]]) == 0
    assert capsys.readouterr().out.strip() == CHATS[0][1]
