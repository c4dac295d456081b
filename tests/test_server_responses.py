"""OpenAI's Responses API through the official ``openai`` client, with the tiny models."""

import json
from pathlib import Path

import httpx
import openai
import pytest

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

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture
def client(tiny_cache: Path, tool_model_dir: Path, thinking_model_dir: Path):
    install_into_cache(tool_model_dir, tiny_cache, repo_id=TOOL_REPO_ID)
    install_into_cache(thinking_model_dir, tiny_cache, repo_id=THINKING_REPO_ID)
    with live_server(load_settings(), watch=False) as base:
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="unused")


def test_a_response_whole_and_streamed(client: openai.OpenAI):
    response = client.responses.create(model=REPO_ID, input=CHATS[0][0], temperature=0)
    assert response.output_text == CHATS[0][1] and response.status == "completed"
    assert response.id.startswith("resp_") and response.usage.output_tokens > 0
    events = list(client.responses.create(model=REPO_ID, input=CHATS[0][0], temperature=0, stream=True))
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "".join(event.delta for event in events if event.type == "response.output_text.delta") == CHATS[0][1]
    assert events[-1].response.output_text == CHATS[0][1]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    short = client.responses.create(model=REPO_ID, input=CHATS[0][0], temperature=0, max_output_tokens=3,
                                    instructions="Be terse.")
    assert short.status == "incomplete" and short.incomplete_details.reason == "max_output_tokens"


def test_function_calls_and_their_outputs(client: openai.OpenAI):
    first = client.responses.create(model=TOOL_REPO_ID, input=WEATHER_QUESTION, tools=[WEATHER], temperature=0)
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    streamed = list(client.responses.create(model=TOOL_REPO_ID, input=WEATHER_QUESTION, tools=[WEATHER],
                                            temperature=0, stream=True))
    [arguments] = [event.arguments for event in streamed if event.type == "response.function_call_arguments.done"]
    assert json.loads(arguments) == {"city": "Paris"}
    follow_up = [{"role": "user", "content": WEATHER_QUESTION}, call.model_dump(exclude_none=True),
                 {"type": "function_call_output", "call_id": call.call_id, "output": WEATHER_RESULT}]
    second = client.responses.create(model=TOOL_REPO_ID, input=follow_up, tools=[WEATHER], temperature=0)
    assert second.output_text == WEATHER_ANSWER
    forced = client.responses.create(model=TOOL_REPO_ID, input=CHATS[0][0], tools=[WEATHER], temperature=0,
                                     tool_choice={"type": "function", "name": "get_weather"})
    assert [item.name for item in forced.output if item.type == "function_call"] == ["get_weather"]


def test_structured_output_and_reasoning(client: openai.OpenAI):
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"],
              "additionalProperties": False}
    shaped = client.responses.create(model=REPO_ID, input=CHATS[1][0], temperature=0, text={"format": {
        "type": "json_schema", "name": "verdict", "schema": schema, "strict": True}})
    assert json.loads(shaped.output_text)["answer"] in ("yes", "no")
    thought = client.responses.create(model=THINKING_REPO_ID, input=CHATS[0][0], temperature=0,
                                      reasoning={"effort": "medium"}, max_output_tokens=96)
    [reasoning] = [item for item in thought.output if item.type == "reasoning"]
    assert reasoning.content[0].text.strip() == THOUGHT and thought.output_text.strip() == CHATS[0][1]


def test_what_is_not_kept_or_served_is_refused(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError, match="response 'resp_123' not found"):
        client.responses.create(model=REPO_ID, input="hi", previous_response_id="resp_123")
    response = httpx.post(f"{client.base_url}responses", json={"model": "nobody/nothing", "input": "hi"}, timeout=60)
    assert response.status_code == 404 and "not found" in response.json()["error"]["message"]


def test_codexs_tools_a_namespace_and_hosted_ones(client: openai.OpenAI, caplog):
    """Codex sends its functions grouped in a namespace, beside hosted tools such as web_search: the functions are
    offered by name, a call comes back in its namespace, and what cannot run here is left out with a log line."""
    import logging

    caplog.set_level(logging.INFO, logger="hllama.server")
    inner = {key: value for key, value in WEATHER.items()}
    tools = [{"type": "namespace", "name": "weather", "description": "Weather tools.", "tools": [inner]},
             {"type": "web_search"}, {"type": "file_search", "vector_store_ids": []}]
    first = client.responses.create(model=TOOL_REPO_ID, input=WEATHER_QUESTION, tools=tools, temperature=0)
    [call] = [item for item in first.output if item.type == "function_call"]
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    assert call.model_dump()["namespace"] == "weather"
    follow_up = [{"role": "user", "content": WEATHER_QUESTION}, call.model_dump(exclude_none=True),
                 {"type": "function_call_output", "call_id": call.call_id, "output": WEATHER_RESULT}]
    assert client.responses.create(model=TOOL_REPO_ID, input=follow_up, tools=tools,
                                   temperature=0).output_text == WEATHER_ANSWER
    plain = client.responses.create(model=TOOL_REPO_ID, input=WEATHER_QUESTION, tools=[WEATHER], temperature=0)
    assert "namespace" not in [item for item in plain.output if item.type == "function_call"][0].model_dump(
        exclude_none=True)
    only_hosted = client.responses.create(model=REPO_ID, input=CHATS[0][0], tools=[{"type": "web_search"}],
                                          temperature=0)
    assert only_hosted.output_text == CHATS[0][1]  # answered as if it offered no tools
    assert "tools: file_search, web_search cannot run here and are left out" in caplog.messages


def test_stored_responses_continue_read_and_go(client: openai.OpenAI):
    first = client.responses.create(model=TOOL_REPO_ID, input=WEATHER_QUESTION, tools=[WEATHER], temperature=0)
    [call] = [item for item in first.output if item.type == "function_call"]
    assert first.store is True and client.responses.retrieve(first.id).output[0].call_id == call.call_id
    # the result alone, after the stored exchange: the model sees the question, its call and the result
    second = client.responses.create(model=TOOL_REPO_ID, previous_response_id=first.id, tools=[WEATHER],
                                     temperature=0, input=[{"type": "function_call_output", "call_id": call.call_id,
                                                            "output": WEATHER_RESULT}])
    assert second.output_text == WEATHER_ANSWER and second.previous_response_id == first.id
    assert second.usage.input_tokens_details.cached_tokens > 0  # the first turn's cache, reused
    whole = [{"role": "user", "content": WEATHER_QUESTION}, call.model_dump(exclude_none=True),
             {"type": "function_call_output", "call_id": call.call_id, "output": WEATHER_RESULT}]
    counted = httpx.post(f"{client.base_url}responses/input_tokens", timeout=60, json={
        "model": TOOL_REPO_ID, "input": whole, "tools": [WEATHER]}).json()
    assert counted == {"object": "response.input_tokens", "input_tokens": second.usage.input_tokens}
    continued = httpx.post(f"{client.base_url}responses/input_tokens", timeout=60, json={
        "model": TOOL_REPO_ID, "previous_response_id": first.id, "input": whole[2:], "tools": [WEATHER]}).json()
    assert continued == counted
    assert client.responses.delete(first.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    unkept = client.responses.create(model=REPO_ID, input=CHATS[0][0], temperature=0, store=False)
    assert unkept.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unkept.id)
    streamed = list(client.responses.create(model=REPO_ID, input=CHATS[0][0], temperature=0, stream=True))
    assert client.responses.retrieve(streamed[-1].response.id).output_text == CHATS[0][1]  # kept when streamed too
