"""Tool calling through both APIs, with a tiny model trained to call ``get_weather``."""

import json
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from hllama.config import load_settings

from .liveserver import live_server
from .tinymodel import (
    CHATS,
    REPO_ID,
    TOOL_REPO_ID,
    WEATHER_ANSWER,
    WEATHER_QUESTION,
    WEATHER_RESULT,
    WEATHER_TOOL,
    install_into_cache,
)

ASK = [{"role": "user", "content": WEATHER_QUESTION}]
GREEDY = {"temperature": 0}


@pytest.fixture
def url(tool_model_dir: Path, tiny_cache: Path):
    install_into_cache(tool_model_dir, tiny_cache, repo_id=TOOL_REPO_ID)
    with live_server(load_settings(), watch=False) as base:
        yield base


def test_ollama_chat_returns_tool_calls_and_takes_their_results(url: str):
    client = ollama.Client(host=url)
    assert "tools" in client.show(TOOL_REPO_ID).capabilities
    reply = client.chat(TOOL_REPO_ID, messages=ASK, tools=[WEATHER_TOOL], options=GREEDY).message
    assert reply.content == ""
    [call] = reply.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}

    chunks = list(client.chat(TOOL_REPO_ID, messages=ASK, tools=[WEATHER_TOOL], options=GREEDY, stream=True))
    assert "".join(chunk.message.content for chunk in chunks) == ""  # no piece of the call leaks as text
    assert [chunk.message.tool_calls for chunk in chunks if chunk.message.tool_calls] == [reply.tool_calls]
    assert chunks[-1].done and chunks[-1].done_reason == "stop"

    follow_up = [*ASK, reply, {"role": "tool", "content": WEATHER_RESULT, "tool_name": "get_weather"}]
    answer = client.chat(TOOL_REPO_ID, messages=follow_up, tools=[WEATHER_TOOL], options=GREEDY).message
    assert answer.content == WEATHER_ANSWER and not answer.tool_calls


def test_offered_tools_need_not_be_called(url: str):
    messages = [{"role": "user", "content": CHATS[0][0]}]
    pieces = [chunk.message.content for chunk in ollama.Client(host=url).chat(
        TOOL_REPO_ID, messages=messages, tools=[WEATHER_TOOL], options=GREEDY, stream=True)]
    assert "".join(pieces) == CHATS[0][1]  # content is not held back (test_tools.py shows it streams at once)


def test_openai_tool_calls_round_trip(url: str):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    tools = [WEATHER_TOOL]
    first = client.chat.completions.create(model=TOOL_REPO_ID, messages=ASK, tools=tools, temperature=0)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}

    streamed = list(client.chat.completions.create(model=TOOL_REPO_ID, messages=ASK, tools=tools, temperature=0,
                                                   stream=True))
    deltas = [chunk.choices[0].delta for chunk in streamed]
    [streamed_call] = [call for delta in deltas for call in delta.tool_calls or []]
    assert streamed_call.function.name == "get_weather" and streamed_call.index == 0
    assert streamed[-1].choices[0].finish_reason == "tool_calls"

    follow_up = [*ASK, choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": WEATHER_RESULT}]
    second = client.chat.completions.create(model=TOOL_REPO_ID, messages=follow_up, tools=tools, temperature=0)
    assert second.choices[0].message.content == WEATHER_ANSWER
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.tool_calls is None


def test_tools_for_a_model_whose_template_cannot_render_them(url: str):
    response = httpx.post(f"{url}/api/chat", json={"model": REPO_ID, "messages": ASK, "tools": [WEATHER_TOOL],
                                                   "stream": False}, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"].startswith(f"{REPO_ID} does not support tools")
    bad_arguments = {"model": TOOL_REPO_ID, "messages": [*ASK, {"role": "assistant", "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "get_weather", "arguments": "{oops"}}]}]}
    response = httpx.post(f"{url}/v1/chat/completions", json=bad_arguments, timeout=60)
    assert response.status_code == 400 and "arguments must be a JSON object" in response.json()["error"]["message"]


#: The weather tool as a client may define it: its model was trained to call it for Paris, which this one lacks.
CITY_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["Lyon", "Nice"]}}, "required": ["city"]}}}


def _ollama_chat(url: str, messages: list, **extra) -> dict:
    """Straight to /api/chat: the ollama client drops schema keywords it does not model."""
    body = {"model": TOOL_REPO_ID, "messages": messages, "tools": [CITY_TOOL], "options": GREEDY, "stream": False}
    response = httpx.post(f"{url}/api/chat", json={**body, **extra}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_call_the_model_opens_follows_its_tools_schema(url: str):
    # the tiny model learned to ask for Paris; the grammar takes over at <tool_call> and holds it to the enum
    reply = _ollama_chat(url, ASK)
    [call] = reply["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and call["function"]["arguments"]["city"] in ("Lyon", "Nice")
    assert reply["message"]["content"] == "" and reply["done_reason"] == "stop"
    lines = httpx.post(f"{url}/api/chat", json={"model": TOOL_REPO_ID, "messages": ASK, "tools": [CITY_TOOL],
                                                "options": GREEDY}, timeout=60).text.splitlines()
    streamed = [json.loads(line)["message"] for line in lines]
    assert [message["tool_calls"] for message in streamed if message.get("tool_calls")] == [[call]]
    # prose is never held to the grammar
    prose = _ollama_chat(url, [{"role": "user", "content": CHATS[0][0]}])["message"]
    assert prose["content"] == CHATS[0][1] and not prose.get("tool_calls")


def test_a_tool_with_a_schema_keyword_the_grammar_lacks_leaves_the_others_enforced(url: str, caplog):
    """One of Claude Code's tools uses ``propertyNames``, which the grammar cannot enforce: that keyword goes
    unchecked (said in the log), and every call is still held to the rest of its tool's schema."""
    import logging

    caplog.set_level(logging.WARNING)
    odd = {"type": "function", "function": {"name": "set_env", "description": "Set variables", "parameters": {
        "type": "object", "properties": {"vars": {"type": "object", "propertyNames": {"pattern": "^[A-Z_]+$"},
                                                  "additionalProperties": {"type": "string"}}}}}}
    # required: the whole answer is held to the calls' grammar, which a tool it could not enforce used to refuse
    reply = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
        "model": TOOL_REPO_ID, "messages": ASK, "tools": [odd, CITY_TOOL], "tool_choice": "required",
        "temperature": 0}).json()
    calls = reply["choices"][0]["message"]["tool_calls"]
    for call in calls:
        arguments = json.loads(call["function"]["arguments"])
        if call["function"]["name"] == "get_weather":
            assert arguments["city"] in ("Lyon", "Nice"), arguments
        else:
            assert call["function"]["name"] == "set_env" and set(arguments) <= {"vars"}, arguments
            assert all(isinstance(value, str) for value in arguments.get("vars", {}).values()), arguments
    assert calls
    assert any("set_env: propertyNames in its parameters cannot be enforced" in message
               for message in caplog.messages)
    assert not any("left unconstrained" in message for message in caplog.messages)


def test_unenforceable_keywords_are_left_out_only_where_they_are_keywords():
    from hllama.engine.schemas import enforceable_parameters

    schema = {"type": "object", "properties": {"not": {"type": "string", "pattern": "^a"},
                                               "m": {"type": "object", "propertyNames": {"pattern": "^a"}},
                                               "n": {"not": {"type": "string"}}}}
    relaxed = json.loads(enforceable_parameters("tool", json.dumps(schema)))
    assert relaxed["properties"]["not"] == {"type": "string", "pattern": "^a"}  # a property named "not" stays
    assert relaxed["properties"]["m"] == {"type": "object"} and relaxed["properties"]["n"] == {}
    assert relaxed["additionalProperties"] is False


def test_tool_choice_required_or_named_makes_the_model_call(url: str):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    prose_question = [{"role": "user", "content": CHATS[0][0]}]  # one the model answers without a tool
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice in ("required", named):
        reply = client.chat.completions.create(model=TOOL_REPO_ID, messages=prose_question, tools=[CITY_TOOL],
                                               tool_choice=choice, temperature=0).choices[0]
        assert reply.finish_reason == "tool_calls", choice
        [call] = reply.message.tool_calls
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments)["city"] in ("Lyon", "Nice")
    stream = client.chat.completions.create(model=TOOL_REPO_ID, messages=prose_question, tools=[CITY_TOOL],
                                            tool_choice=named, temperature=0, stream=True)
    calls = [call for chunk in stream for call in chunk.choices[0].delta.tool_calls or []]
    assert [call.function.name for call in calls] == ["get_weather"]
    none = client.chat.completions.create(model=TOOL_REPO_ID, messages=ASK, tools=[CITY_TOOL], tool_choice="none",
                                          temperature=0).choices[0]
    assert none.finish_reason == "stop" and none.message.tool_calls is None and none.message.content


@pytest.mark.parametrize(("extra", "message"), [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "no tool named 'nope'"),
    ({"tools": None, "tool_choice": "required"}, "offers no tools"),
    ({"tool_choice": "required", "response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
     "cannot be combined"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
])
def test_impossible_tool_choices_are_refused(url: str, extra: dict, message: str):
    body = {"model": TOOL_REPO_ID, "messages": ASK, "tools": [CITY_TOOL], **extra}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]
