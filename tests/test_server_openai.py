"""The OpenAI-compatible routes, through OpenAI's own Python client."""

from pathlib import Path

import httpx
import openai
import pytest

from hllama.cli import main
from hllama.config import load_settings

from .liveserver import live_server
from .tinymodel import CHATS, REPO_ID


@pytest.fixture
def url(tiny_cache: Path, hllama_home: Path):
    assert main(["create", "--alias", "tiny", "--model", REPO_ID]) == 0
    with live_server(load_settings()) as base:
        yield base


@pytest.fixture
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused")


def test_chat_logprobs(client: openai.OpenAI):
    question, answer = CHATS[0]
    ask = {"model": "tiny", "messages": [{"role": "user", "content": question}], "temperature": 0,
           "logprobs": True, "top_logprobs": 2}
    choice = client.chat.completions.create(**ask).choices[0]
    tokens = [entry.token for entry in choice.logprobs.content]
    assert "".join(tokens) == answer and all(len(entry.top_logprobs) == 2 for entry in choice.logprobs.content)
    chunks = list(client.chat.completions.create(**ask, stream=True))
    assert [entry.token for entry in chunks[-1].choices[0].logprobs.content] == tokens
    assert client.chat.completions.create(**{**ask, "logprobs": False}).choices[0].logprobs is None


def test_chat_completion(client: openai.OpenAI):
    question, answer = CHATS[0]
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": question}],
                                           temperature=0)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content == answer
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens > 0 and reply.usage.total_tokens == (
        reply.usage.prompt_tokens + reply.usage.completion_tokens)


def test_streamed_chat_completion(client: openai.OpenAI):
    question, answer = CHATS[1]
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": question}], temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == answer
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_parameters_reach_generation(client: openai.OpenAI):
    question, answer = CHATS[4]
    cut = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": question}],
                                         temperature=0, stop="robot")
    assert cut.choices[0].message.content == answer[: answer.index("robot")]
    short = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": question}],
                                           temperature=0, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    sampled = [client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                              seed=11, max_tokens=12, presence_penalty=0.5, frequency_penalty=0.5)
               .choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1]
    for response_format in ({"type": "json_object"},
                            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}):
        reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=2, response_format=response_format)
        assert reply.choices[0].finish_reason in ("stop", "length")


def test_completions(client: openai.OpenAI):
    """As Ollama's: the prompt goes through the chat template (the trained model answers a bare question)."""
    prompt = CHATS[3][0]
    reply = client.completions.create(model="tiny", prompt=prompt, temperature=0, max_tokens=40)
    assert reply.object == "text_completion" and reply.choices[0].text == CHATS[3][1]
    streamed = list(client.completions.create(model="tiny", prompt=prompt, temperature=0, max_tokens=40,
                                              stream=True))
    assert "".join(chunk.choices[0].text for chunk in streamed) == CHATS[3][1]
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_models(client: openai.OpenAI):
    # the repo id too, as Ollama lists a created model beside its base: clients select either
    assert [model.id for model in client.models.list()] == ["tiny:latest", f"{REPO_ID}:latest"]
    assert client.models.retrieve(REPO_ID).id == f"{REPO_ID}:latest"
    assert client.models.retrieve("tiny").id == client.models.retrieve("Tiny:latest").id == "tiny:latest"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_errors_have_openai_shape(client: openai.OpenAI, url: str):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["message"] == "model 'nope' not found"
    assert caught.value.body["type"] == "not_found_error"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[])
    response = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", "temperature": -1,
                                                              "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["message"].startswith("temperature:")
