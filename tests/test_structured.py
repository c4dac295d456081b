"""Structured output: JSON mode and JSON schemas enforced token by token, through the engine and both APIs."""

import json
import queue
import re
from pathlib import Path
from typing import Literal

import httpx
import ollama
import openai
import pytest
import torch
from pydantic import BaseModel, Field

from hllama.config import load_settings
from hllama.engine import build_prompt
from hllama.engine.events import END
from hllama.engine.generate import Generation
from hllama.engine.grammar import constraint_for
from hllama.engine.tools import ToolCalls, parse_tool_calls
from hllama.errors import InvalidOption
from hllama.options import Parameters

from .liveserver import live_server
from .tinymodel import CHATS, REPO_ID, THINKING_REPO_ID, THOUGHT, install_into_cache

GREEDY = Parameters(temperature=0.0, max_new_tokens=120)
SCHEMA = {"type": "object", "required": ["answer", "count", "tags"], "properties": {
    "answer": {"enum": ["yes", "no"]},
    "count": {"type": "integer", "minimum": 0, "maximum": 99},
    "tags": {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 12}}}}


class Verdict(BaseModel):
    """The same shape as SCHEMA, as a client library would declare it."""

    answer: Literal["yes", "no"]
    count: int = Field(ge=0, le=99)
    tags: list[str] = Field(max_length=3)


def _valid(text: str) -> bool:
    document = json.loads(text)
    return (set(document) == {"answer", "count", "tags"} and document["answer"] in ("yes", "no")
            and isinstance(document["count"], int) and 0 <= document["count"] <= 99
            and isinstance(document["tags"], list) and len(document["tags"]) <= 3
            and all(isinstance(tag, str) and len(tag) <= 12 for tag in document["tags"]))


def _answer(tiny, question: str, params: Parameters = GREEDY, **kwargs) -> tuple[str, str]:
    items: queue.Queue = queue.Queue()
    ids = build_prompt(tiny.tokenizer, [{"role": "user", "content": question}]).ids
    generation = Generation(tiny, ids, params, sink=items.put, **kwargs).start()
    text = ""
    while (item := items.get(timeout=60)) is not END:
        if isinstance(item, BaseException):
            raise item
        text += item
    generation.join()
    return text, generation.finished().stats.done_reason


@pytest.mark.parametrize("question", [question for question, _ in CHATS] + ["hi", "Write about rivers."])
def test_every_answer_follows_the_schema(tiny, question):
    text, reason = _answer(tiny, question, structure=SCHEMA)
    assert _valid(text) and reason == "stop", text


def test_structured_and_free_rows_share_a_batch(tiny):
    free = [_answer(tiny, question)[0] for question, _ in CHATS]
    rows = []
    for index, (question, _) in enumerate(CHATS):
        items: queue.Queue = queue.Queue()
        ids = build_prompt(tiny.tokenizer, [{"role": "user", "content": question}]).ids
        structure = SCHEMA if index % 2 else None
        rows.append((Generation(tiny, ids, GREEDY, sink=items.put, structure=structure), items, structure))
    for generation, _, _ in rows:
        generation.start()
    for index, (generation, items, structure) in enumerate(rows):
        text = "".join(iter(lambda items=items: items.get(timeout=60), END))
        generation.join()
        assert _valid(text) if structure else text == free[index]


def test_the_generate_path_enforces_the_same_grammar(tiny, monkeypatch):
    batched = _answer(tiny, CHATS[2][0], structure=SCHEMA)[0]
    monkeypatch.setattr(tiny, "batcher", None)
    assert _answer(tiny, CHATS[2][0], structure=SCHEMA)[0] == batched and _valid(batched)


def test_json_mode_gives_a_json_object(tiny):
    from hllama.conversation import ANY_OBJECT

    text, _ = _answer(tiny, CHATS[1][0], structure=ANY_OBJECT)
    assert isinstance(json.loads(text), dict)


WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"enum": ["Lyon", "Nice"]}}, "required": ["city"]}}}]


@pytest.mark.parametrize("choice", ["required", "get_weather"])
def test_a_required_call_in_bare_json_follows_its_tool(tiny, choice):
    text, reason = _answer(tiny, CHATS[0][0], structure=ToolCalls.of(WEATHER, style="json", choice=choice))
    content, calls = parse_tool_calls(text)
    assert content == "" and calls and all(call.name == "get_weather" and call.arguments["city"] in ("Lyon", "Nice")
                                           for call in calls)
    assert len(calls) == 1 or choice == "required"  # "required" is one call or more; a named tool, exactly one


def test_a_lazy_bare_json_grammar_leaves_prose_alone(tiny):
    calls = ToolCalls.of(WEATHER, style="json")
    for question, answer in CHATS:
        assert _answer(tiny, question, structure=calls)[0] == answer


def test_a_lazy_tagged_grammar_holds_each_call_and_nothing_else(tiny):
    tokenizer, matcher_tokenizer = tiny.tokenizer, tiny.grammar_tokenizer
    constraint = constraint_for(ToolCalls.of(WEATHER, style="tagged"), matcher_tokenizer)

    def allowed() -> int:
        scores = torch.zeros(matcher_tokenizer.vocab_size)
        constraint.mask(scores)
        return int(torch.isfinite(scores).sum())

    def write(text: str) -> None:
        for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
            constraint.accept(token)

    everything = allowed()
    for _ in range(2):  # prose, a call, prose, another call
        write("Let me look. ")
        assert allowed() == everything
        write("<tool_call>")
        assert allowed() < everything
        write('{"name": "get_weather", "arguments": {"city": "Ly')
        assert allowed() < everything
        write('on"}}</tool_call>')
        assert allowed() == everything
    # a tokenizer llguidance cannot read: calls stay as the model writes them, unless one is required
    assert constraint_for(ToolCalls.of(WEATHER, style="tagged"), None) is None
    with pytest.raises(InvalidOption, match="cannot be constrained"):
        constraint_for(ToolCalls.of(WEATHER, style="tagged", choice="required"), None)


def test_a_lazy_tagged_grammar_takes_over_within_the_token_that_opens_the_call(tool_model_dir: Path):
    from transformers import AutoTokenizer

    from hllama.engine.grammar import grammar_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(tool_model_dir)
    matcher_tokenizer = grammar_tokenizer(tokenizer, vocab_size=len(tokenizer), eos_ids=[tokenizer.eos_token_id])
    opening = tokenizer('<tool_call>{"name": "get_weather", "arguments": {"city": "', add_special_tokens=False)
    pieces = [tokenizer.decode([token]) for token in opening["input_ids"]]
    assert '>{"' in pieces  # the fixture's own tokenizer ends the opener and begins the call in one token
    constraint = constraint_for(ToolCalls.of(WEATHER, style="tagged"), matcher_tokenizer)
    for token in opening["input_ids"]:
        constraint.accept(token)
    scores = torch.zeros(matcher_tokenizer.vocab_size)
    constraint.mask(scores)
    allowed = {tokenizer.decode([token]) for token in torch.isfinite(scores).nonzero().flatten().tolist()}
    assert allowed and all("Lyon".startswith(text) or "Nice".startswith(text) for text in allowed), allowed


def test_an_answer_cut_by_num_predict_says_length(tiny):
    text, reason = _answer(tiny, CHATS[4][0], GREEDY.model_copy(update={"max_new_tokens": 3}), structure=SCHEMA)
    assert reason == "length" and text.startswith("{")


#: Unbounded strings, which the tiny model fills with babble until its budget runs out.
OPEN_ENDED = {"type": "object", "required": ["title", "kind", "tags"], "properties": {
    "title": {"type": "string"}, "kind": {"enum": ["person", "place"]},
    "tags": {"type": "array", "items": {"type": "string"}}}}


@pytest.mark.parametrize("budget", [40, 64, 100])
def test_an_answer_near_its_limit_closes_what_it_opened(tiny, budget):
    limited = GREEDY.model_copy(update={"max_new_tokens": budget})
    text, reason = _answer(tiny, "Write about rivers.", limited, structure=OPEN_ENDED)
    document = json.loads(text)
    assert reason == "stop" and set(document) == {"title", "kind", "tags"} and document["kind"] in ("person", "place")
    assert len(tiny.tokenizer(text, add_special_tokens=False)["input_ids"]) < budget
    # the answer kept what it could: the babble ran until closing it and the rest took just what was left
    assert document["title"] or budget == 40


@pytest.mark.parametrize("budget", range(30, 70, 3))
def test_an_answer_that_keeps_opening_items_still_closes_within_its_budget(tiny, budget):
    """Whatever the model prefers: here, at every step, another item if it may, else more of a string."""
    matcher_tokenizer = tiny.grammar_tokenizer
    constraint = constraint_for(SCHEMA, matcher_tokenizer, budget=budget)
    texts = {token: tiny.tokenizer.decode([token]) for token in range(matcher_tokenizer.vocab_size)}
    liking = [", ", ",", ' "', '"', "a", "4"]  # most liked first; anything else comes after, lowest id first
    eos = matcher_tokenizer.eos_token
    written: list[int] = []
    for _ in range(budget):
        scores = torch.zeros(matcher_tokenizer.vocab_size)
        constraint.mask(scores)
        allowed = torch.isfinite(scores).nonzero().flatten().tolist()
        choice = min(allowed, key=lambda token: (token == eos, liking.index(texts[token]) if texts[token] in liking
                                                 else len(liking), token))
        if choice == eos:
            break
        constraint.accept(choice)
        written.append(choice)
    else:
        pytest.fail(f"no end within {budget} tokens: {tiny.tokenizer.decode(written)!r}")
    assert _valid(tiny.tokenizer.decode(written))


def test_an_answer_that_cannot_close_in_time_is_left_alone_and_cut(tiny):
    long_story = {"type": "object", "required": ["story"],
                  "properties": {"story": {"type": "string", "minLength": 500}}}
    limited = GREEDY.model_copy(update={"max_new_tokens": 64})
    text, reason = _answer(tiny, "Write about rivers.", limited, structure=long_story)
    assert reason == "length" and text.startswith('{"story": "')
    assert "]]]]" not in text and "}}}}" not in text  # not pushed toward closing it could never reach


def test_the_generate_path_closes_the_same_way(tiny, monkeypatch):
    limited = GREEDY.model_copy(update={"max_new_tokens": 64})
    batched = _answer(tiny, "Write about rivers.", limited, structure=OPEN_ENDED)
    monkeypatch.setattr(tiny, "batcher", None)
    assert _answer(tiny, "Write about rivers.", limited, structure=OPEN_ENDED) == batched


@pytest.mark.parametrize("schema, problem", [
    ({"type": "object", "if": {"type": "object"}, "then": {}}, 'Unimplemented keys: ["if", "then"]'),
    ({"type": "objekt"}, "Invalid type: objekt"),
    ({"properties": {"a": {"$ref": "#/$defs/missing"}}}, "Pointer '/$defs/missing' does not exist"),
])
def test_a_schema_that_cannot_be_enforced_is_refused_by_name(tiny, schema, problem):
    with pytest.raises(InvalidOption, match=re.escape(f"cannot be enforced: {problem}")):
        _answer(tiny, "hi", structure=schema)


@pytest.fixture
def url(tiny_cache: Path, thinking_model_dir: Path):
    install_into_cache(thinking_model_dir, tiny_cache, repo_id=THINKING_REPO_ID)
    with live_server(load_settings(), watch=False) as base:
        yield base


def test_format_through_both_apis_and_their_clients(url: str):
    ask = [{"role": "user", "content": CHATS[3][0]}]
    options = {"temperature": 0}
    native = httpx.post(f"{url}/api/chat", timeout=60, json={"model": REPO_ID, "messages": ask, "format": SCHEMA,
                                                              "stream": False, "options": options}).json()
    assert _valid(native["message"]["content"])
    with httpx.stream("POST", f"{url}/api/generate", timeout=60, json={
            "model": REPO_ID, "prompt": CHATS[3][0], "format": SCHEMA, "options": options}) as response:
        streamed = "".join(json.loads(line)["response"] for line in response.iter_lines())
    assert _valid(streamed)
    client = ollama.Client(host=url)
    reply = client.chat(REPO_ID, messages=ask, format=Verdict.model_json_schema(), options=options)
    Verdict.model_validate_json(reply.message.content)
    parsed = openai.OpenAI(base_url=f"{url}/v1", api_key="unused").chat.completions.parse(
        model=REPO_ID, messages=ask, response_format=Verdict, temperature=0).choices[0].message.parsed
    assert isinstance(parsed, Verdict)
    refused = httpx.post(f"{url}/api/chat", timeout=60, json={"model": REPO_ID, "messages": ask,
                                                               "format": {"type": "objekt"}})
    assert refused.status_code == 400 and "cannot be enforced: Invalid type: objekt" in refused.json()["error"]


def test_a_thinking_model_told_not_to_think_answers_in_the_schema(url: str):
    reply = ollama.Client(host=url).chat(THINKING_REPO_ID, messages=[{"role": "user", "content": CHATS[0][0]}],
                                         format=SCHEMA, think=False, options={"temperature": 0})
    assert not reply.message.thinking and _valid(reply.message.content)


def test_a_thinking_model_thinks_freely_then_answers_in_the_schema(thinking_model_dir: Path, tmp_path: Path):
    from hllama.aliases.registry import Registry
    from hllama.aliases.resolve import resolve
    from hllama.config import Settings
    from hllama.engine import load_model
    from hllama.engine.grammar import thinking_mode
    from hllama.models.hardware import memory_budget

    settings = Settings(home=tmp_path)
    thinker = load_model(resolve(str(thinking_model_dir), settings=settings, registry=Registry(tmp_path)),
                         budget=memory_budget(settings))
    try:
        prompt = build_prompt(thinker.tokenizer, [{"role": "user", "content": CHATS[0][0]}], think=True)
        assert thinking_mode(prompt) == "maybe"
        items: queue.Queue = queue.Queue()
        generation = Generation(thinker, prompt.ids, GREEDY, sink=items.put, structure=SCHEMA,
                                thinking="maybe").start()
        text = "".join(iter(lambda: items.get(timeout=60), END))
        generation.join()
    finally:
        thinker.close()
    thought, _, answer = text.partition("</think>")
    assert thought == f"<think>{THOUGHT}" and _valid(answer)  # its own thought, untouched; then the schema


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    from hllama.cli import main

    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_with_format_a_schema_file_json_or_text(capsys, tiny_cache: Path, tmp_path: Path):
    schema_file = tmp_path / "verdict.json"
    schema_file.write_text(json.dumps(SCHEMA))
    code, out, _ = _run(capsys, "run", REPO_ID, CHATS[3][0], "--temperature", "0", "--format", str(schema_file))
    assert code == 0 and _valid(out)
    code, out, _ = _run(capsys, "run", REPO_ID, CHATS[1][0], "--temperature", "0", "--format", json.dumps(SCHEMA))
    assert code == 0 and _valid(out)
    code, out, _ = _run(capsys, "run", REPO_ID, "Count to five.", "--temperature", "0", "--format", "json")
    assert code == 0 and isinstance(json.loads(out), dict)
    code, out, _ = _run(capsys, "run", REPO_ID, "Say hello.", "--temperature", "0", "--json-mode")
    assert code == 0 and isinstance(json.loads(out), dict)
    code, _, err = _run(capsys, "run", REPO_ID, "hi", "--format", str(tmp_path / "missing.json"))
    assert code != 0 and err.startswith("Error: --format: use json, a JSON schema, or a file holding one")
    code, _, err = _run(capsys, "run", REPO_ID, "hi", "--format", '{"type": "objekt"}')
    assert code != 0 and "cannot be enforced: Invalid type: objekt" in err and len(err.splitlines()) == 1


def test_a_modelfile_format_holds_every_answer_of_its_alias(capsys, tiny_cache: Path, modelfiles: Path):
    (modelfiles / "verdict.yaml").write_text(
        f"from: {REPO_ID}\nparameters:\n  temperature: 0\n  format: {json.dumps(SCHEMA)}\n")
    code, out, _ = _run(capsys, "run", "verdict", CHATS[3][0])
    assert code == 0 and _valid(out)


@pytest.mark.parametrize("extra, accepted", [
    ({"regex": "[0-9]{3}-[a-z]{2}"}, lambda text: re.fullmatch("[0-9]{3}-[a-z]{2}", text) is not None),
    ({"choice": ["yes", "no", "maybe so"]}, lambda text: text in ("yes", "no", "maybe so")),
    ({"grammar": 'start: "Paris" | "London" | "Rome"'}, lambda text: text in ("Paris", "London", "Rome")),
    ({"grammar": 'root ::= "red" | "blue" " sky"'}, lambda text: text in ("red", "blue sky")),
    ({"json": SCHEMA}, _valid),
])
def test_vllm_structured_outputs_on_v1(url: str, extra, accepted):
    reply = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
        "model": REPO_ID, "messages": [{"role": "user", "content": CHATS[0][0]}], "temperature": 0,
        "max_tokens": 60, "structured_outputs": extra}).json()
    assert "choices" in reply, reply
    assert accepted(reply["choices"][0]["message"]["content"]), reply


@pytest.mark.parametrize("extra, problem", [
    ({"regex": "a", "choice": ["b"]}, "structured_outputs: give exactly one of json, regex, choice and grammar"),
    ({"regex": "([a-z"}, "structured_outputs.regex cannot be enforced"),
    ({"grammar": "start: undefined_rule"}, "structured_outputs.grammar cannot be enforced"),
])
def test_structured_outputs_that_cannot_be_enforced_are_refused(url: str, extra, problem):
    response = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
        "model": REPO_ID, "messages": [{"role": "user", "content": "hi"}], "structured_outputs": extra})
    assert response.status_code == 400 and response.json()["error"]["message"].startswith(problem)
