"""Every route against malformed, mistyped, out-of-range, huge, surrogate, deeply nested and path-like input.

Whatever is sent: no 5xx, every error in its API's own shape, no traceback in the log, and the server
still answers (and still answers correctly) afterwards. The mutations are drawn from a fixed seed, so
a failure is reproducible; its request is in the assertion message.
"""

import json
import logging
import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from hllama.cli import main
from hllama.config import load_settings

from .fakehub import FakeHub, FakeRepo
from .liveserver import live_server
from .tinymodel import CHATS, REPO_ID, REVISION

QUESTION, ANSWER = CHATS[0]
CHAT = [{"role": "user", "content": "hi"}]

#: Each route with a body that works, so that every mutation tests one thing.
ROUTES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/chat"): {"model": "tiny", "messages": CHAT, "stream": False, "options": {"num_predict": 3}},
    ("POST", "/api/generate"): {"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 3}},
    ("POST", "/api/embed"): {"model": "tiny", "input": "hi"},
    ("POST", "/api/embeddings"): {"model": "tiny", "prompt": "hi"},
    ("POST", "/api/show"): {"model": "tiny"},
    ("POST", "/api/pull"): {"model": REPO_ID, "stream": False},
    ("POST", "/api/copy"): {"source": "tiny", "destination": "fuzzcopy"},
    ("POST", "/api/create"): {"model": "fuzzmade", "from": "tiny", "stream": False},
    ("DELETE", "/api/delete"): {"model": "fuzzcopy"},
    ("POST", "/v1/chat/completions"): {"model": "tiny", "messages": CHAT, "max_tokens": 3},
    ("POST", "/v1/completions"): {"model": "tiny", "prompt": "hi", "max_tokens": 3},
    ("POST", "/v1/embeddings"): {"model": "tiny", "input": "hi"},
}

#: Keys each route may carry besides its base body (dotted: inside ``options`` or a message).
EXTRA_KEYS = {
    "/api/chat": ["format", "keep_alive", "think", "tools", "logprobs", "top_logprobs", "messages.0.role",
                  "messages.0.content", "messages.0.tool_calls", "messages.0.images", "stream"],
    "/api/generate": ["system", "template", "context", "raw", "suffix", "format", "keep_alive", "think", "images",
                      "logprobs", "top_logprobs", "stream"],
    "/api/embed": ["truncate", "dimensions", "keep_alive", "options"],
    "/api/embeddings": ["keep_alive", "options"],
    "/api/show": ["name", "verbose"],
    "/api/pull": ["name", "insecure", "stream"],
    "/api/copy": [],
    "/api/create": ["system", "template", "license", "parameters", "messages", "quantize", "files", "adapters",
                    "name", "parameters.temperature", "parameters.stop", "parameters.num_ctx"],
    "/api/delete": ["name"],
    "/v1/chat/completions": ["temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty",
                             "response_format", "tools", "tool_choice", "reasoning_effort", "logprobs",
                             "top_logprobs", "stream", "stream_options", "max_completion_tokens", "messages.0.role",
                             "messages.0.content", "messages.0.tool_calls", "n", "user"],
    "/v1/completions": ["temperature", "top_p", "stop", "seed", "suffix", "stream", "echo", "logprobs"],
    "/v1/embeddings": ["encoding_format", "dimensions", "user"],
}
OPTIONS = ["temperature", "top_p", "top_k", "min_p", "seed", "repeat_penalty", "presence_penalty",
           "frequency_penalty", "stop", "num_predict", "num_ctx", "repeat_last_n", "mirostat", "unknown_option"]


def _deep(levels: int) -> Any:
    value: Any = "bottom"
    for index in range(levels):
        value = [value] if index % 2 else {"k": value}
    return value


VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 3, 2**31, 2**63, -(2**63), 2**64 + 5, 10**30, -(10**30), 1e-300, 1e308, -1e308,
    0.5, -0.5, "", " ", "x", "x" * 5000, "\ud800", "a\udfffb", "\u0000", "a\u0000b", "../../etc/passwd",
    "/etc/shadow", "/", "~/.ssh", "./model", "C:\\Windows", "tiny", "tiny:latest", "TINY", "org/" + "n" * 300,
    "hllama-test/tiny-chat", "{{ x }}", "{% for a in range(99999) %}{% endfor %}", "5m", "-1", "NaN", "1e400",
    [], [1], [-1], ["a"], [None], [[]], [{}], {}, {"a": 1}, {"type": "object"}, _deep(40), _deep(70),
    [{"role": "user"}], [{"role": "tool", "content": 5}], {"type": "json_schema", "json_schema": 1},
]

#: Bodies no parser should choke on.
RAW_BODIES: list[tuple[bytes, str | None]] = [
    (b"", None), (b"{", None), (b"[]", None), (b"null", None), (b'"x"', None), (b"\xff\xfe\x00", None),
    (b'{"model": NaN}', None), (b'{"model": Infinity}', None), (b'{"model": 1e999}', None),
    (b"[" * 20000, None), (b'{"a":' * 20000, None), (b'{"model": "\\ud800"}', None),
    (b'{"model": ' + b"9" * 10000 + b"}", None), (b'{"model": "tiny"}', "text/plain"),
    (b"model=tiny", "application/x-www-form-urlencoded"), (b'{"model": "tiny"}', "multipart/form-data; boundary=z"),
    (b'{"model": "tiny", "model": "x"}', None), (b"\xef\xbb\xbf{}", None), (b'{"model": "t\\u0000iny"}', None),
]


def _mutate(body: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(body))
    target, *path = key.split(".")
    if not path:
        body[target] = value
    elif target == "options" or target == "parameters":
        body.setdefault(target, {})[path[0]] = value
    elif target == "messages":
        body.setdefault("messages", [{}])[int(path[0])][path[1]] = value
    return body


def _cases(rng: random.Random, per_route: int) -> list[tuple[str, str, dict[str, Any]]]:
    cases = []
    for (method, path), base in ROUTES.items():
        keys = [*base, *EXTRA_KEYS[path], *(f"options.{name}" for name in OPTIONS if "api/" in path)]
        for _ in range(per_route):
            cases.append((method, path, _mutate(base, rng.choice(keys), rng.choice(VALUES))))
        cases += [(method, path, _mutate(base, key, None)) for key in base]  # each field left out or null
    return cases


def _check(response: httpx.Response, path: str, sent: Any) -> None:
    where = f"{response.request.method} {path} {str(sent)[:300]!r}"
    assert response.status_code < 500, f"{where} -> {response.status_code} {response.text[:500]}"
    if response.status_code >= 400:
        error = response.json()["error"]
        if response.request.url.path.startswith("/v1/"):  # the path as sent (a client folds "..")
            assert isinstance(error, dict) and isinstance(error["message"], str) and error["type"], where
        else:
            assert isinstance(error, str) and error, where
    elif response.headers.get("content-type", "").startswith("application/x-ndjson"):  # ends done, or in an error
        last = json.loads(response.text.strip().splitlines()[-1])
        assert last.get("done") is True or last.get("status") == "success" or isinstance(last.get("error"), str), \
            where
    elif response.headers.get("content-type", "").startswith("text/event-stream"):  # OpenAI's end, or an error
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        assert data[-1] == "[DONE]" and "Traceback" not in response.text, where


#: The server's body limit in these tests: names are tried at every length up to it.
BODY_LIMIT = 256 * 1024


@pytest.fixture
def url(tiny_model_dir: Path, tiny_cache: Path, hllama_home: Path, monkeypatch: pytest.MonkeyPatch):
    assert main(["create", "--alias", "tiny", "--model", REPO_ID, "--temperature", "0"]) == 0
    monkeypatch.setenv("HLLAMA_MAX_REQUEST_SIZE", str(BODY_LIMIT))
    with FakeHub({REPO_ID: FakeRepo(tiny_model_dir, REVISION)}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with live_server(load_settings()) as base:
            monkeypatch.setenv("HLLAMA_HOST", base.removeprefix("http://"))  # where `hllama ps` looks
            yield base


def _ps_renders(capsys: pytest.CaptureFixture, after: str) -> None:
    """``hllama ps`` shows whatever state the server is left in."""
    capsys.readouterr()
    code = main(["ps"])
    shown = capsys.readouterr()
    assert code == 0 and shown.out.startswith("NAME"), f"after {after[:300]}: {shown.err[-500:]}"


def test_no_input_breaks_any_route(url: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture):
    caplog.set_level(logging.WARNING)
    rng = random.Random(8)
    with httpx.Client(base_url=url, timeout=120) as client:  # one pooled connection: a reset would show
        for method, path, body in _cases(rng, per_route=150):
            _check(client.request(method, path, content=json.dumps(body)), path, body)
            _ps_renders(capsys, f"{path} {body}")
        for (method, path) in ROUTES:
            for raw, content_type in RAW_BODIES:
                headers = {"Content-Type": content_type} if content_type else {}
                _check(client.request(method, path, content=raw, headers=headers), path, raw[:80])
        for name in ("x", "a%00b", "%ED%A0%80", "../../etc/passwd", "n" * 5000, "tiny%3Alatest", "%FF"):
            _check(client.get(f"/v1/models/{name}"), "/v1/models/", name)
        for path in ("/", "/api/version", "/api/tags", "/api/ps", "/v1/models", "/nope", "/api/chat"):
            _check(client.get(path), path, None)
            _check(client.request("PATCH", path), path, None)
        tracebacks = [record.getMessage() for record in caplog.records if record.exc_info or
                      record.levelno >= logging.ERROR]
        assert tracebacks == []
        assert client.get("/api/version").status_code == 200
        # the fuzz may have deleted the alias and the cached model (both are valid requests): pull, then ask
        assert client.post("/api/pull", json={"model": REPO_ID, "stream": False}).json() == {"status": "success"}
        answer = client.post("/api/chat", json={"model": REPO_ID, "messages": [{"role": "user", "content": QUESTION}],
                                                "options": {"temperature": 0}, "stream": False}).json()
        assert answer["message"]["content"] == ANSWER


#: Name lengths tried: around every limit a file system or a field has (255 bytes a part, 4096 a path).
LENGTHS = [0, 1, 2, 96, 97, 199, 200, 201, 254, 255, 256, 257, 300, 1000, 4095, 4096, 4097, 10_000, 100_000,
           BODY_LIMIT - 200]

#: What a name may look like: plain, a path, a path of a folder, accented (two bytes a character), an owner/name.
SHAPES = [lambda n: "x" * n, lambda n: "/" + "x" * n, lambda n: "./" + "y" * n, lambda n: "é" * (n // 2),
          lambda n: "o" * n + "/model", lambda n: "a/" + "b" * n, lambda n: "~/" + "z" * n, lambda n: "q" * n + ".gguf",
          lambda n: "../" * (n // 3)]

#: Where each route takes a model's name.
NAMED = {("POST", "/api/chat"): "model", ("POST", "/api/generate"): "model", ("POST", "/api/embed"): "model",
         ("POST", "/api/embeddings"): "model", ("POST", "/api/show"): "model", ("POST", "/api/pull"): "model",
         ("POST", "/api/copy"): "source", ("POST", "/api/create"): "from", ("DELETE", "/api/delete"): "model",
         ("POST", "/v1/chat/completions"): "model", ("POST", "/v1/completions"): "model",
         ("POST", "/v1/embeddings"): "model"}


def test_names_of_every_length_and_shape_on_every_route(url: str, caplog: pytest.LogCaptureFixture,
                                                        capsys: pytest.CaptureFixture):
    caplog.set_level(logging.WARNING)
    with httpx.Client(base_url=url, timeout=120) as client:
        for length in LENGTHS:
            for shape in SHAPES:
                name = shape(length)
                for (method, path), field in NAMED.items():
                    body = {**ROUTES[(method, path)], field: name}
                    if path == "/api/create":
                        body["model"] = "named"
                    answer = client.request(method, path, content=json.dumps(body))
                    _check(answer, path, f"{field} of {len(name)} characters: {name[:40]}")
                    assert len(answer.content) < 2000 or answer.status_code == 200, (path, len(answer.content))
                if len(name.encode()) < 8000:  # a URL longer than that is refused by the HTTP layer itself
                    _check(client.get(f"/v1/models/{name}"), "/v1/models/", name[:40])
            _ps_renders(capsys, f"names of {length} characters")
        tracebacks = [record.getMessage() for record in caplog.records if record.exc_info or
                      record.levelno >= logging.ERROR]
        assert tracebacks == []
        assert client.get("/api/version").status_code == 200
