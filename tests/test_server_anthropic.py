"""Anthropic's Messages API through the official ``anthropic`` client, with the tiny models."""

from pathlib import Path
from typing import Literal

import anthropic
import httpx
import ollama
import pytest
from pydantic import BaseModel, Field

from hllama.config import load_settings

from .liveserver import live_server
from .tinymodel import (
    CHATS,
    REPO_ID,
    THINKING_REPO_ID,
    THOUGHT,
    TOOL_REPO_ID,
    WEATHER_ANSWER,
    WEATHER_QUESTION,
    WEATHER_RESULT,
    install_into_cache,
)

ASK = [{"role": "user", "content": CHATS[0][0]}]
GREEDY = {"temperature": 0}  # the client no longer offers sampling settings; older ones and other tools send them
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture
def url(tiny_cache: Path, tool_model_dir: Path, thinking_model_dir: Path):
    install_into_cache(tool_model_dir, tiny_cache, repo_id=TOOL_REPO_ID)
    install_into_cache(thinking_model_dir, tiny_cache, repo_id=THINKING_REPO_ID)
    with live_server(load_settings(), watch=False) as base:
        yield base


def _client(url: str, key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key)


def test_a_message_whole_and_streamed(url: str):
    client = _client(url)
    reply = client.messages.create(model=REPO_ID, max_tokens=64, messages=ASK, extra_body=GREEDY)
    assert [block.type for block in reply.content] == ["text"] and reply.content[0].text == CHATS[0][1]
    assert reply.stop_reason == "end_turn" and reply.role == "assistant" and reply.id.startswith("msg_")
    assert reply.usage.output_tokens > 0 and reply.usage.input_tokens > 0
    with client.messages.stream(model=REPO_ID, max_tokens=64, messages=ASK, extra_body=GREEDY) as stream:
        events = list(stream)
        final = stream.get_final_message()
    text = "".join(event.delta.text for event in events if event.type == "content_block_delta")
    started = next(event for event in events if event.type == "message_start")
    assert started.message.usage.input_tokens == reply.usage.input_tokens  # counted there, as Anthropic does
    assert text == CHATS[0][1] and final.content[0].text == CHATS[0][1] and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == reply.usage.output_tokens
    short = client.messages.create(model=REPO_ID, max_tokens=3, messages=ASK, extra_body=GREEDY,
                                   system="You are terse.", stop_sequences=["never"])
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3


def test_tool_use_and_its_result(url: str):
    client = _client(url)
    ask = [{"role": "user", "content": WEATHER_QUESTION}]
    reply = client.messages.create(model=TOOL_REPO_ID, max_tokens=64, messages=ask, tools=[WEATHER], extra_body=GREEDY)
    assert reply.stop_reason == "tool_use"
    [call] = [block for block in reply.content if block.type == "tool_use"]
    assert call.name == "get_weather" and call.input == {"city": "Paris"} and call.id.startswith("toolu_")
    with client.messages.stream(model=TOOL_REPO_ID, max_tokens=64, messages=ask, tools=[WEATHER],
                                extra_body=GREEDY) as stream:
        final = stream.get_final_message()
    assert [(block.name, block.input) for block in final.content if block.type == "tool_use"] == [
        ("get_weather", {"city": "Paris"})]
    follow_up = [*ask, {"role": "assistant", "content": reply.content},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                               "content": WEATHER_RESULT}]}]
    answer = client.messages.create(model=TOOL_REPO_ID, max_tokens=64, messages=follow_up, tools=[WEATHER],
                                    extra_body=GREEDY)
    assert answer.content[0].text == WEATHER_ANSWER and answer.stop_reason == "end_turn"
    forced = client.messages.create(model=TOOL_REPO_ID, max_tokens=64, messages=ASK, tools=[WEATHER],
                                    tool_choice={"type": "tool", "name": "get_weather"}, extra_body=GREEDY)
    assert forced.stop_reason == "tool_use" and forced.content[-1].name == "get_weather"


def test_thinking_comes_as_its_own_block(url: str):
    client = _client(url)
    reply = client.messages.create(model=THINKING_REPO_ID, max_tokens=96, messages=ASK, extra_body=GREEDY,
                                   thinking={"type": "enabled", "budget_tokens": 1024})
    assert [block.type for block in reply.content] == ["thinking", "text"]
    assert reply.content[0].thinking.strip() == THOUGHT and reply.content[1].text.strip() == CHATS[0][1]
    with client.messages.stream(model=THINKING_REPO_ID, max_tokens=96, messages=ASK, extra_body=GREEDY,
                                thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        kinds = [event.delta.type for event in stream if event.type == "content_block_delta"]
    assert "thinking_delta" in kinds and "text_delta" in kinds
    assert kinds.index("text_delta") > kinds.index("thinking_delta")


class Verdict(BaseModel):
    answer: Literal["yes", "no"]
    tags: list[str] = Field(max_length=3)  # the client moves bounds it cannot send into the description


def test_structured_output_through_the_clients_parse(url: str):
    parsed = _client(url).messages.parse(model=REPO_ID, max_tokens=64, messages=ASK, output_format=Verdict,
                                         extra_body=GREEDY)
    assert isinstance(parsed.parsed_output, Verdict)


def test_count_tokens_matches_what_the_model_reads(url: str):
    counted = _client(url).messages.count_tokens(model=REPO_ID, messages=ASK)
    read = ollama.Client(host=url).chat(REPO_ID, messages=ASK, options={"num_predict": 1})
    assert counted.input_tokens == read.prompt_eval_count > 0


def test_claude_codes_first_request_is_answered(url: str):
    """What Claude Code 2.1 sends a model name it does not know: a system message after the first user turn (its
    mid-conversation-system beta) and adaptive thinking, which a model that cannot think ignores, as on Anthropic's
    API (Ollama's own ``think`` still refuses it)."""
    client = _client(url)
    messages = [{"role": "user", "content": CHATS[0][0]}, {"role": "system", "content": "Reminder: be concise."},
                {"role": "user", "content": CHATS[2][0]}]
    reply = client.messages.create(model=REPO_ID, max_tokens=16, system="You are a coding agent.",
                                   messages=messages, thinking={"type": "adaptive"}, extra_body=GREEDY)
    assert reply.stop_reason in ("end_turn", "max_tokens") and reply.content[0].type == "text"
    assert client.messages.create(model=REPO_ID, max_tokens=4, messages=ASK,
                                  thinking={"type": "enabled", "budget_tokens": 1024}).content
    counted = client.messages.count_tokens(model=REPO_ID, messages=messages, system="You are a coding agent.")
    without = client.messages.count_tokens(model=REPO_ID, messages=[messages[0], messages[2]],
                                           system="You are a coding agent.")
    assert counted.input_tokens > without.input_tokens  # the mid-conversation instruction is in the prompt
    thinker = client.messages.create(model=THINKING_REPO_ID, max_tokens=64, messages=ASK, extra_body=GREEDY,
                                     thinking={"type": "enabled", "budget_tokens": 1024})
    assert [block.type for block in thinker.content][0] == "thinking"  # a model that thinks still does


def test_errors_in_anthropics_shape(url: str):
    client = _client(url)
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="nobody/nothing-here", max_tokens=8, messages=ASK)
    assert missing.value.body["type"] == "error" and missing.value.body["error"]["type"] == "not_found_error"
    image = [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                       "data": "iVBORw0KGgo="}}]}]
    with pytest.raises(anthropic.BadRequestError, match=r"messages\[0\].content\[0\]: not an image"):
        client.messages.create(model=REPO_ID, max_tokens=8, messages=image)


def test_x_api_key_is_the_servers_key(tiny_cache: Path, monkeypatch):
    monkeypatch.setenv("HLLAMA_API_KEY", "sesame")
    with live_server(load_settings(), watch=False) as base:
        reply = _client(base, "sesame").messages.create(model=REPO_ID, max_tokens=64, messages=ASK, extra_body=GREEDY)
        assert reply.content[0].text == CHATS[0][1]
        with pytest.raises(anthropic.AuthenticationError):
            _client(base, "wrong").messages.create(model=REPO_ID, max_tokens=8, messages=ASK)
        assert httpx.post(f"{base}/api/chat", json={"model": REPO_ID, "messages": ASK},
                          headers={"x-api-key": "sesame"}).status_code == 200


def test_a_stop_sequence_is_named(url: str):
    client = _client(url)
    reply = client.messages.create(model=REPO_ID, max_tokens=64, messages=ASK, stop_sequences=["Paris", "zzz"],
                                   extra_body=GREEDY)
    assert reply.content[0].text == "The capital of France is " and reply.stop_reason == "stop_sequence"
    assert reply.stop_sequence == "Paris"
    with client.messages.stream(model=REPO_ID, max_tokens=64, messages=ASK, stop_sequences=["Paris"],
                                extra_body=GREEDY) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == "Paris"
