"""Single hostile or careless requests: each is a 4xx in its API's shape, and the server goes on answering."""

import json
from pathlib import Path

import httpx
import openai
import pytest

from hllama.cli import main
from hllama.config import load_settings

from .liveserver import live_server
from .tinymodel import CHATS, REPO_ID

QUESTION, ANSWER = CHATS[0]


@pytest.fixture
def url(tiny_cache: Path, hllama_home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a Hub that refuses at once
    assert main(["create", "--alias", "tiny", "--model", REPO_ID, "--temperature", "0"]) == 0
    with live_server(load_settings()) as base:
        yield base


def _chat(**extra):
    return {"model": "tiny", "messages": [{"role": "user", "content": QUESTION}], "stream": False, **extra}


CASES = [
    # (method, path, body, status, what the error says)
    ("POST", "/api/chat", _chat(options={"temperature": 1e-300}), 200, None),
    ("POST", "/api/chat", _chat(options={"repeat_penalty": 1e-300, "temperature": 0.5, "seed": 3}), 200, None),
    ("POST", "/api/chat", _chat(options={"seed": 2**70}), 200, None),
    ("POST", "/api/chat", _chat(options={"seed": -(2**70)}), 200, None),
    ("POST", "/api/generate", {"model": "tiny", "prompt": "hi", "context": [99999999], "stream": False}, 400,
     "context holds token ids outside the model's vocabulary"),
    ("POST", "/api/generate", {"model": "tiny", "prompt": "hi", "context": [-1], "stream": False}, 400,
     "context holds token ids outside"),
    ("POST", "/api/generate", {"model": "tiny", "prompt": "hi", "template": "{{ foo( }}", "stream": False}, 400,
     "the chat template failed"),
    ("POST", "/api/generate", {"model": "tiny", "prompt": "hi", "template": "{{ x.y.z }}", "stream": False}, 400,
     "the chat template failed"),
    ("POST", "/api/generate", {"model": "tiny", "prompt": "hi", "template": "{{ 1 + 'a' }}", "stream": False}, 400,
     "the chat template failed"),
    ("POST", "/api/generate", {"model": "tiny", "prompt": "hi", "template": "{{ raise_exception('no') }}"}, 400,
     "the chat template failed: no"),
    ("POST", "/api/embed", {"model": "tiny", "input": [""]}, 400, "an input has no tokens"),
    ("POST", "/api/pull", {"model": "a b c"}, 400, "invalid model name"),
    ("POST", "/api/pull", {"model": "x" * 300}, 400, "invalid model name"),
    ("POST", "/api/create", {"model": "a" * 300, "from": REPO_ID}, 400, "invalid alias name"),
    ("POST", "/api/copy", {"source": "tiny", "destination": "b" * 300}, 400, "invalid alias name"),
    ("POST", "/api/create", {"model": "x", "from": "a b"}, 400, "from: expected a Hub repo id"),
    ("POST", "/api/create", {"model": "x", "from": "/etc/shadow"}, 400, "'from' names no model"),
    ("POST", "/api/create", {"model": "x", "from": "/"}, 400, "'from' names no model"),
    ("POST", "/api/create", {"model": "x", "from": "~/.ssh"}, 400, "'from' names no model"),
    ("POST", "/api/create", {"model": "x", "from": "./relative"}, 400, "'from' names no model"),
    ("POST", "/api/create", {"model": "x", "from": "/etc/x.gguf"}, 400, "'from' names no model"),
    ("POST", "/api/create", {"model": "x", "from": REPO_ID, "system": "\ud800"}, 400, "invalid text"),
    ("POST", "/api/show", {"model": "/etc"}, 404, "model '/etc' not found"),
    ("POST", "/api/show", {"model": "/"}, 404, "model '/' not found"),
    ("POST", "/api/show", {"model": "a\u0000b"}, 404, "not found"),
    ("POST", "/api/chat", {"model": "/etc/passwd", "messages": [{"role": "user", "content": "x"}]}, 404, "not found"),
    ("POST", "/api/chat", _chat(keep_alive="NaN"), 400, "invalid keep_alive"),
    ("GET", "/api/nothing", None, 404, "/api/nothing not found"),
    ("GET", "/api/chat", None, 405, "method GET not allowed"),
    ("PUT", "/api/tags", None, 405, "method PUT not allowed"),
]


@pytest.mark.parametrize("method, path, body, status, message", CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_each_is_a_client_error(url: str, method: str, path: str, body, status: int, message: str | None, caplog):
    content = None if body is None else json.dumps(body)
    answer = httpx.request(method, url + path, content=content, timeout=60)
    assert answer.status_code == status, answer.text
    if message is not None:
        assert message in answer.json()["error"]
    assert not [record for record in caplog.records if record.exc_info], "a traceback was logged"
    assert httpx.post(f"{url}/api/show", json={"model": "tiny"}).status_code == 200


def test_a_local_folder_that_is_no_model_shows_nothing_of_it(url: str, tmp_path: Path):
    (tmp_path / "chat_template.jinja").write_text("SECRET TEMPLATE")
    (tmp_path / "tokenizer_config.json").write_text('{"chat_template": "SECRET"}')
    for route, body in (("/api/show", {"model": str(tmp_path)}), ("/api/create", {"model": "x", "from": str(tmp_path)}),
                        ("/api/generate", {"model": str(tmp_path), "prompt": "hi"})):
        answer = httpx.post(url + route, json=body)
        assert answer.status_code in (400, 404) and "SECRET" not in answer.text


def test_the_routers_own_errors_use_each_apis_shape(url: str):
    assert httpx.get(f"{url}/api/nope").json() == {"error": "/api/nope not found"}
    answer = httpx.get(f"{url}/v1/nope")
    assert answer.status_code == 404 and answer.json()["error"]["type"] == "not_found_error"
    assert httpx.get(f"{url}/v1/chat/completions").json()["error"]["message"].startswith("method GET not allowed")


def test_a_huge_keep_alive_is_forever_and_ps_still_answers(url: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HLLAMA_HOST", url.removeprefix("http://"))
    for keep_alive in (1e12, "99999999h", 1e300, "1e400"):
        body = _chat(keep_alive=keep_alive) if keep_alive != "1e400" else None
        if body is None:  # not a JSON number Python can hold: refused by the reader, not overflowing later
            raw = json.dumps(_chat()).replace('"stream": false', '"stream": false, "keep_alive": 1e400')
            assert httpx.post(f"{url}/api/chat", content=raw).status_code == 400
            continue
        assert httpx.post(f"{url}/api/chat", json=body, timeout=60).status_code == 200
        [running] = httpx.get(f"{url}/api/ps").json()["models"]
        assert running["expires_at"] > "2030"
    assert main(["ps"]) == 0


def test_the_effective_header_stays_small_whatever_the_alias_holds(url: str, hllama_home: Path):
    long_system = "You are a careful assistant. " * 4  # the tiny model's context holds no more
    stops = [f"STOP{index}-" + "z" * 400 for index in range(40)]  # 16 KB of stop strings
    (hllama_home / "modelfiles" / "big.yaml").write_text(json.dumps(
        {"from": REPO_ID, "system": long_system, "parameters": {"stop": stops, "temperature": 0}}))
    answer = httpx.post(f"{url}/api/chat", json={**_chat(), "model": "big"}, timeout=60)
    assert answer.status_code == 200
    header = answer.headers["X-Hllama-Effective"]
    assert len(header) < 2048
    effective = json.loads(header)
    assert effective["sources"]["system"] == "modelfile" and effective["parameters"]["temperature"] == 0
    assert effective["system"].startswith("You are a careful") and "sha256:" in effective["system"]
    assert len(effective["parameters"]["stop"]) == 5 and effective["parameters"]["stop"][-1] == "...36 more"


def test_openai_routes_keep_the_aliases_sampling_when_the_client_omits_it(url: str):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    answers = set()
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model="tiny", messages=[{"role": "user", "content": QUESTION}])
        effective = json.loads(raw.headers["X-Hllama-Effective"])
        assert effective["parameters"]["temperature"] == 0 and effective["sources"]["parameters.temperature"] == \
            "modelfile"
        assert effective["sources"]["parameters.top_p"] == "default"
        answers.add(raw.parse().choices[0].message.content)
    assert answers == {ANSWER}
    hot = client.chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "user", "content": QUESTION}], temperature=1.5)
    assert json.loads(hot.headers["X-Hllama-Effective"])["sources"]["parameters.temperature"] == "api"


def test_num_ctx_is_capped_at_the_models_context(url: str):
    """The tiny model knows 256 positions: a larger num_ctx is that, so prompts are bounded before prefill."""
    huge = {"role": "user", "content": "tell me more " * 3000}
    answer = httpx.post(f"{url}/api/chat", json={**_chat(options={"num_ctx": 1e12}), "messages": [huge]}, timeout=60)
    assert answer.status_code == 400 and "the context is 256 tokens" in answer.json()["error"]
    history = [{"role": role, "content": f"turn {index} " * 20} for index in range(40)
               for role in ("user", "assistant")]
    long_talk = {**_chat(options={"num_ctx": 10**12}), "messages": [*history, {"role": "user", "content": QUESTION}]}
    answer = httpx.post(f"{url}/api/chat", json=long_talk, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["prompt_eval_count"] < 256
    assert answer.json()["message"]["content"] == ANSWER


LOOP = "{% for a in range(600) %}{% for b in range(600) %}{% for c in range(600) %}{% endfor %}{% endfor %}{% endfor %}"


@pytest.mark.parametrize("template, message", [
    (LOOP, "rendering took longer than 2 s"),
    ("{{ 'x' * 10**8 }}", "too large a value"),
    ("{{ messages * 10**9 }}", "too large a value"),
    ("{{ 7 ** 99999999 }}", "an exponent larger than 64"),
    ("{% for i in range(100000) %}{% for j in range(1000) %}{{ 'xxxxxxxxxx' * 100 }}{% endfor %}{% endfor %}",
     "the output is larger than"),
    ("{{ ''.__class__.__mro__ }}", "the chat template failed"),
])
def test_request_templates_are_bounded_in_time_and_size(url: str, template: str, message: str):
    import time

    started = time.monotonic()
    answer = httpx.post(f"{url}/api/generate", json={"model": "tiny", "prompt": "hi", "template": template,
                                                      "stream": False}, timeout=60)
    assert answer.status_code == 400 and message in answer.json()["error"], answer.text
    assert time.monotonic() - started < 10
    after = httpx.post(f"{url}/api/chat", json=_chat(), timeout=60)  # the model's only slot is free again
    assert after.json()["message"]["content"] == ANSWER


def test_an_alias_template_renders_in_the_bounded_sandbox_too(url: str, hllama_home: Path):
    from .tinymodel import CHAT_TEMPLATE

    (hllama_home / "modelfiles" / "templated.yaml").write_text(json.dumps(
        {"from": REPO_ID, "template": CHAT_TEMPLATE, "parameters": {"temperature": 0}}))
    (hllama_home / "modelfiles" / "looping.yaml").write_text(json.dumps({"from": REPO_ID, "template": LOOP}))
    answer = httpx.post(f"{url}/api/chat", json={**_chat(), "model": "templated"}, timeout=60)
    assert answer.json()["message"]["content"] == ANSWER  # the same prompt as the model's own template gives
    looping = httpx.post(f"{url}/api/chat", json={**_chat(), "model": "looping"}, timeout=60)
    assert looping.status_code == 400 and "longer than 2 s" in looping.json()["error"]


def test_openapi_documents_every_request_body(url: str):
    document = httpx.get(f"{url}/openapi.json").json()
    components = document["components"]["schemas"]
    bodies = {(path, method): operation["requestBody"]["content"]["application/json"]["schema"]
              for path, operations in document["paths"].items() for method, operation in operations.items()
              if method in ("post", "delete") and path != "/v1/responses/{response_id}"}  # an id, no body
    assert set(bodies) == {(path, "post") for path in (
        "/api/show", "/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/pull", "/api/copy",
        "/api/create", "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
        "/v1/responses/input_tokens", "/v1/messages", "/v1/messages/count_tokens")} | {("/api/delete", "delete")}
    assert {"model", "messages", "options", "format", "stream", "keep_alive", "tools"} <= set(
        bodies[("/api/chat", "post")]["properties"])
    assert bodies[("/api/chat", "post")]["properties"]["messages"]["items"] == {
        "$ref": "#/components/schemas/OllamaMessage"}
    assert {"model", "messages", "temperature", "response_format"} <= set(
        bodies[("/v1/chat/completions", "post")]["properties"])
    refs = json.dumps(document).count('"$ref": "#/components/schemas/')
    assert refs and all(name in components for name in ("OllamaMessage", "ChatMessage", "ResponseFormat"))
    for schema in components.values():  # every field says what it is
        for field in schema.get("properties", {}).values():
            assert "description" in field or "$ref" in field or schema.get("title") in (
                "HTTPValidationError", "ValidationError"), (schema.get("title"), field)


def _validator(document: dict, schema: dict):
    """A validator of ``schema``, its references looked up in ``document``'s components."""
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    registry = Registry().with_resource("urn:hllama", Resource.from_contents(document,
                                                                             default_specification=DRAFT202012))
    rooted = json.loads(json.dumps(schema).replace('"#/components/', '"urn:hllama#/components/'))
    return jsonschema.Draft202012Validator(rooted, registry=registry)


def test_openapi_marks_what_is_required_and_every_error_answer(url: str):
    document = httpx.get(f"{url}/openapi.json").json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert {"400", "404", "415", "500"} <= set(responses) and "422" not in responses, (path, method)
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body is None:
                continue
            assert not _validator(document, body).is_valid({}), path  # {} is refused, as the route refuses it
            refused = httpx.request(method.upper(), f"{url}{path}", json={})
            assert refused.status_code == 400, (path, refused.text)
            error_schema = responses["400"]["content"]["application/json"]["schema"]
            _validator(document, error_schema).validate(refused.json())  # the answer has the shape documented
    assert "HTTPValidationError" not in document["components"]["schemas"]


_SHORT = {"num_predict": 4}
_HI = [{"role": "user", "content": "hi"}]
_ANSWERS = [("GET", "/api/version", None), ("GET", "/api/tags", None), ("POST", "/api/show", {"model": "tiny"}),
            ("GET", "/api/ps", None), ("POST", "/api/generate", {"model": "tiny", "prompt": ""}),
            ("POST", "/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                   "stream": False, "logprobs": True, "top_logprobs": 2, "options": _SHORT}),
            ("POST", "/api/generate", {"model": "tiny", "prompt": "hi", "stream": False, "options": _SHORT}),
            ("POST", "/api/embed", {"model": "tiny", "input": ["a", "b"]}),
            ("POST", "/api/embeddings", {"model": "tiny", "prompt": "a"}),
            ("POST", "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                              "max_tokens": 4, "logprobs": True, "top_logprobs": 1}),
            ("POST", "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 4}),
            ("POST", "/v1/embeddings", {"model": "tiny", "input": "a"}),
            ("GET", "/v1/models", None), ("GET", "/v1/models/tiny", None),
            ("POST", "/v1/responses", {"model": "tiny", "input": "hi", "max_output_tokens": 4}),
            ("POST", "/v1/messages", {"model": "tiny", "max_tokens": 4, "messages": _HI}),
            ("POST", "/v1/messages/count_tokens", {"model": "tiny", "messages": _HI})]


def test_openapi_documents_the_answer_of_every_route(url: str):
    document = httpx.get(f"{url}/openapi.json").json()
    for path, operations in document["paths"].items():
        if path in ("/", "/api/delete", "/api/copy"):
            continue  # plain text, or an empty body
        for method, operation in operations.items():
            schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
            assert "$ref" in schema, (path, method, schema)
    for method, path, body in _ANSWERS:  # each answer has the shape documented
        operation = document["paths"]["/v1/models/{model_id}" if path == "/v1/models/tiny" else path][method.lower()]
        answer = httpx.request(method, f"{url}{path}", json=body, timeout=60)
        assert answer.status_code == 200, (path, answer.text)
        _validator(document, operation["responses"]["200"]["content"]["application/json"]["schema"]).validate(
            answer.json())


@pytest.mark.parametrize("name", ["x" * 300, "/" + "x" * 300, "é" * 200, "o" * 300 + "/model", "a/" + "b" * 4000])
def test_names_too_long_for_a_file_are_no_model_and_the_connection_stays(url: str, name: str):
    with httpx.Client(base_url=url, timeout=60) as client:  # pooled: a connection closed on error would show
        for _ in range(3):
            for method, path, body in (("POST", "/api/chat", {"model": name, "messages": [{"role": "user",
                                                                                            "content": "hi"}]}),
                                       ("POST", "/api/show", {"model": name}),
                                       ("POST", "/v1/chat/completions", {"model": name, "messages": [
                                           {"role": "user", "content": "hi"}]}),
                                       ("POST", "/api/create", {"model": "x", "from": name}),
                                       ("GET", f"/v1/models/{name}", None)):
                answer = client.request(method, path, json=body)
                assert 400 <= answer.status_code < 500, (path, answer.status_code, answer.text[:300])
                assert len(answer.text) < 1500  # not the whole name echoed back
        assert client.get("/api/version").status_code == 200


def test_an_unexpected_error_is_a_500_in_its_apis_shape_on_a_connection_that_stays(url: str, caplog):
    from hllama.runtime import service

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    with httpx.Client(base_url=url, timeout=60) as client:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(service.Service, "resolve", broken)  # a stand-in for any bug below the routes
            ollama_answer = client.post("/api/chat", json=_chat())
            openai_answer = client.post("/v1/chat/completions", json=_chat())
        assert ollama_answer.status_code == openai_answer.status_code == 500
        assert ollama_answer.json() == {"error": "internal error (ZeroDivisionError); the server log has the details"}
        assert openai_answer.json()["error"]["type"] == "api_error"
        assert client.post("/api/chat", json=_chat()).json()["message"]["content"] == ANSWER
        connections = {id(response.extensions["network_stream"]) for response in (ollama_answer, openai_answer)}
    assert len(connections) == 1  # both answered on one connection: the error did not close it
    assert [record.exc_info[0] for record in caplog.records if record.exc_info] == [ZeroDivisionError] * 2


def test_a_model_folder_without_a_tokenizer_is_a_400_naming_it(url: str, tiny_model_dir: Path, tmp_path: Path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bare / name).unlink(missing_ok=True)
    answer = httpx.post(f"{url}/api/chat", json={**_chat(), "model": str(bare)}, timeout=60)
    assert answer.status_code == 400 and "has no tokenizer" in answer.json()["error"], answer.text


def test_a_prompt_that_cannot_fit_is_refused_before_it_is_tokenized(url: str, monkeypatch):
    from hllama.engine import tokens

    big = "tell me more " * 400_000  # 5 MB against the tiny model's 256 tokens
    tokenized: list[int] = []
    real = tokens.token_ids

    def counting(tokenizer, text, **kwargs):
        tokenized.append(len(text))
        return real(tokenizer, text, **kwargs)

    monkeypatch.setattr("hllama.backends.local.token_ids", counting)
    for body in (_chat(messages=[{"role": "user", "content": big}]),
                 {"model": "tiny", "prompt": big, "raw": True, "stream": False}):
        route = "/api/chat" if "messages" in body else "/api/generate"
        answer = httpx.post(f"{url}{route}", json=body, timeout=60)
        assert answer.status_code == 400 and "needs at least" in answer.json()["error"], answer.text
    assert tokenized == [len(big)]  # the raw one reached token_ids, which refused it by its length alone


def test_embed_takes_at_most_2048_inputs(url: str):
    for route, field in (("/api/embed", "input"), ("/v1/embeddings", "input")):
        answer = httpx.post(f"{url}{route}", json={"model": "tiny", field: ["hi"] * 2049}, timeout=60)
        assert answer.status_code == 400 and "at most 2048" in answer.text, answer.text


def test_a_prompt_too_long_is_said_in_the_words_each_apis_clients_act_on(url: str):
    import anthropic

    long = "tell me more about it " * 200  # some 1,000 tokens against the tiny model's 256
    with pytest.raises(anthropic.BadRequestError) as refused:  # Claude Code compacts its history on these words
        anthropic.Anthropic(base_url=url, api_key="unused").messages.create(
            model="tiny", max_tokens=8, messages=[{"role": "user", "content": long}])
    message = refused.value.body["error"]["message"]
    assert refused.value.body["error"]["type"] == "invalid_request_error"
    needed, maximum = (int(number) for number in message.split(":")[1].split("maximum")[0].split("tokens >"))
    assert message.startswith("prompt is too long: ") and needed > maximum == 256, message
    with pytest.raises(openai.BadRequestError) as refused_openai:  # OpenAI's clients look for the code
        openai.OpenAI(base_url=f"{url}/v1", api_key="unused").chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": long}])
    assert refused_openai.value.code == "context_length_exceeded"
    ollama_answer = httpx.post(f"{url}/api/chat", json=_chat(messages=[{"role": "user", "content": long}]))
    assert ollama_answer.status_code == 400 and ollama_answer.json()["error"].startswith("the prompt needs")


def test_turns_left_out_to_fit_are_said(url: str, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="hllama.server")
    history = [{"role": role, "content": f"{role} turn {number}: " + "words " * 30}
               for number in range(6) for role in ("user", "assistant")] + [{"role": "user", "content": "hi"}]
    whole = httpx.post(f"{url}/api/chat", json=_chat(messages=history, options={"num_predict": 2}), timeout=60)
    assert whole.status_code == 200 and int(whole.headers["X-Hllama-Turns-Dropped"]) > 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=60, json={
            "model": "tiny", "messages": history, "max_tokens": 2, "stream": True}) as streamed:
        assert streamed.headers["X-Hllama-Turns-Dropped"] == whole.headers["X-Hllama-Turns-Dropped"]
    short = httpx.post(f"{url}/api/chat", json=_chat(options={"num_predict": 2}), timeout=60)
    assert "X-Hllama-Turns-Dropped" not in short.headers  # nothing left out, nothing said
    dropped = int(whole.headers["X-Hllama-Turns-Dropped"])
    assert f'hllama_prompt_turns_dropped_total{{model="tiny"}} {2 * dropped}.0' in httpx.get(f"{url}/metrics").text
    assert any("oldest turns left out to fit" in record.getMessage() for record in caplog.records)
