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
    assert [model.model for model in client.list().models] == ["tiny:latest"]

    with pytest.raises(openai.AuthenticationError) as refused_openai:
        openai.OpenAI(base_url=f"{keyed}/v1", api_key="wrong").models.list()
    assert refused_openai.value.body["code"] == "invalid_api_key"
    answer = openai.OpenAI(base_url=f"{keyed}/v1", api_key="s3cret").chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": CHATS[0][0]}])
    assert answer.choices[0].message.content == CHATS[0][1]


def test_ps_sends_the_configured_key(keyed: str, capsys, monkeypatch: pytest.MonkeyPatch):
    assert main(["ps"]) == 0
    assert capsys.readouterr().out.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    monkeypatch.setenv("HLLAMA_API_KEY", "wrong")
    assert main(["ps"]) == 1
    assert capsys.readouterr().err.startswith("Error: unauthorized")


def test_an_empty_key_is_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HLLAMA_API_KEY", " ")
    with pytest.raises(ConfigError, match="api_key.*must not be empty"):
        load_settings()
