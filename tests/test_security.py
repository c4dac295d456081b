"""CORS for local origins only, Host checks on a loopback bind (DNS rebinding), and the optional API key."""

from pathlib import Path

import httpx
import ollama
import openai
import pytest

from hllama.cli import main
from hllama.config import load_settings
from hllama.errors import ConfigError
from hllama.server.security import exposure_warning, is_loopback, origin_pattern

from .liveserver import live_server
from .tinymodel import CHATS, REPO_ID


@pytest.fixture
def url(hllama_home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HLLAMA_ORIGINS", "https://chat.example.com, https://*.trusted.dev")
    with live_server(load_settings()) as base:
        yield base


@pytest.mark.parametrize("origin, allowed", [
    ("http://localhost:3000", True), ("http://127.0.0.1", True), ("app://obsidian.md", True),
    ("vscode-webview://abc", True), ("https://chat.example.com", True), ("https://x.trusted.dev", True),
    ("https://evil.example", False), ("http://localhost.evil.example", False),
])
def test_cors_allows_local_and_configured_origins_only(url: str, origin: str, allowed: bool):
    preflight = httpx.options(f"{url}/api/chat", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
    assert (preflight.headers.get("access-control-allow-origin") == origin) is allowed
    simple = httpx.get(f"{url}/api/version", headers={"Origin": origin})
    assert (simple.headers.get("access-control-allow-origin") == origin) is allowed


@pytest.mark.parametrize("host, status", [("localhost:11434", 200), ("127.0.0.1", 200), ("[::1]:8080", 200),
                                          ("evil.example", 403), ("rebind.example:11434", 403)])
def test_a_loopback_server_answers_only_for_loopback_names(url: str, host: str, status: int):
    response = httpx.get(f"{url}/api/version", headers={"Host": host})
    assert response.status_code == status
    if status == 403:
        assert response.json() == {"error": "forbidden: this server only answers requests for localhost"}


def test_helpers():
    assert exposure_warning("0.0.0.0", has_key=False).startswith("serving on 0.0.0.0 without an API key")
    assert exposure_warning("0.0.0.0", has_key=True) is None and exposure_warning("::1", has_key=False) is None
    assert is_loopback("localhost") and is_loopback("127.0.0.5") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")
    assert origin_pattern([]).startswith("^(")


@pytest.fixture
def keyed(tiny_cache: Path, hllama_home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HLLAMA_API_KEY", "s3cret")
    assert main(["create", "--alias", "tiny", "--model", REPO_ID, "--temperature", "0"]) == 0
    with live_server(load_settings(), watch=False) as base:
        monkeypatch.setenv("HLLAMA_HOST", base.removeprefix("http://"))  # where `hllama ps` looks
        yield base


def test_an_api_key_guards_every_route_but_the_health_check(keyed: str):
    assert httpx.get(keyed).text == "Ollama is running"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        refused = httpx.get(f"{keyed}/api/tags", headers={"Origin": "http://localhost:3000", **headers})
        assert refused.status_code == 401 and refused.json()["error"].startswith("unauthorized")
        assert refused.headers["access-control-allow-origin"] == "http://localhost:3000"  # a page can tell why
    preflight = httpx.options(f"{keyed}/api/chat", headers={"Origin": "http://localhost:3000",
                                                             "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200

    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=keyed).list()
    assert caught.value.status_code == 401
    client = ollama.Client(host=keyed, headers={"Authorization": "Bearer s3cret"})
    assert [model.model for model in client.list().models] == ["tiny:latest", f"{REPO_ID}:latest"]

    with pytest.raises(openai.AuthenticationError) as refused_openai:
        openai.OpenAI(base_url=f"{keyed}/v1", api_key="wrong").models.list()
    assert refused_openai.value.body["code"] == "invalid_api_key"
    answer = openai.OpenAI(base_url=f"{keyed}/v1", api_key="s3cret").chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": CHATS[0][0]}])
    assert answer.choices[0].message.content == CHATS[0][1]


def test_ps_sends_the_configured_key(keyed: str, capsys, monkeypatch: pytest.MonkeyPatch):
    assert main(["ps"]) == 0
    assert capsys.readouterr().out.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "RUNNING", "QUEUED",
                                               "UNTIL"]
    monkeypatch.setenv("HLLAMA_API_KEY", "wrong")
    assert main(["ps"]) == 1
    assert capsys.readouterr().err.startswith("Error: unauthorized")


def test_an_empty_key_is_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HLLAMA_API_KEY", " ")
    with pytest.raises(ConfigError, match="api_key.*must not be empty"):
        load_settings()


@pytest.fixture
def served_alias(tiny_cache: Path, hllama_home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HLLAMA_MAX_REQUEST_SIZE", "1MiB")
    assert main(["create", "--alias", "tiny", "--model", REPO_ID, "--system", "Be kind."]) == 0
    with live_server(load_settings()) as base:
        yield base


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/api/create", '{"model": "tiny", "from": "hllama-test/tiny-chat", "system": "pwned"}'),
    ("POST", "/api/copy", '{"source": "tiny", "destination": "planted"}'),
    ("POST", "/api/chat", '{"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}'),
    ("POST", "/api/pull", '{"model": "hllama-test/tiny-chat"}'),
    ("DELETE", "/api/delete", '{"model": "tiny"}'),
    ("POST", "/v1/chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}'),
    ("GET", "/api/tags", None),
])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_a_foreign_web_page_cannot_write_or_run_anything(served_alias: str, hllama_home: Path, method: str,
                                                        path: str, body: str | None, content_type: str):
    """What a page's no-cors fetch or form post sends: its Origin, and a body labelled as text or a form."""
    answer = httpx.request(method, served_alias + path, content=body,
                           headers={"Origin": "https://evil.example", "Content-Type": content_type})
    assert answer.status_code == 403
    expected = answer.json()["error"]
    assert "origin" in (expected["message"] if isinstance(expected, dict) else expected)
    assert sorted(path.name for path in (hllama_home / "modelfiles").iterdir()) == ["tiny.yaml"]
    assert "pwned" not in (hllama_home / "modelfiles" / "tiny.yaml").read_text()


def test_non_json_bodies_are_415_and_curl_style_json_still_works(served_alias: str):
    page = {"Origin": "http://localhost:3000"}  # even an allowed page: it can say application/json
    for content_type, origin in (("text/plain", page), ("multipart/form-data; boundary=x", {}),
                                 ("text/plain;charset=UTF-8", page)):
        refused = httpx.post(f"{served_alias}/api/show", content='{"model": "tiny"}',
                             headers={"Content-Type": content_type, **origin})
        assert refused.status_code == 415 and "must be JSON" in refused.json()["error"]
    refused = httpx.post(f"{served_alias}/v1/chat/completions", content="{}",
                         headers={"Content-Type": "text/plain", **page})
    assert refused.status_code == 415 and refused.json()["error"]["type"] == "invalid_request_error"
    # a tool that labels its JSON as text (Node's fetch without a type, aiohttp's data=) names no Origin
    for content_type in ("text/plain", "text/plain;charset=UTF-8"):
        shown = httpx.post(f"{served_alias}/api/show", content='{"model": "tiny"}',
                           headers={"Content-Type": content_type})
        assert shown.status_code == 200 and shown.json()["system"] == "Be kind."
    # curl -d labels JSON as a form; local tools without an Origin keep working
    shown = httpx.post(f"{served_alias}/api/show", content='{"model": "tiny"}',
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert shown.status_code == 200 and shown.json()["system"] == "Be kind."
    allowed = httpx.post(f"{served_alias}/api/show", json={"model": "tiny"}, headers={"Origin": "http://localhost:3000"})
    assert allowed.status_code == 200


def test_request_bodies_have_a_size_limit(served_alias: str):
    big = '{"model": "tiny", "prompt": "' + "x" * (2 * 1024 * 1024) + '"}'
    told = httpx.post(f"{served_alias}/api/generate", content=big)
    assert told.status_code == 413 and "too large" in told.json()["error"]

    def chunks():
        yield big[:1000].encode()
        for _ in range(40):
            yield b"x" * 65536

    streamed = httpx.post(f"{served_alias}/v1/completions", content=chunks())  # no Content-Length: counted
    assert streamed.status_code == 413 and "too large" in streamed.json()["error"]["message"]
    assert httpx.post(f"{served_alias}/api/show", json={"model": "tiny"}).status_code == 200
