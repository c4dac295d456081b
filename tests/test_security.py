"""CORS for local origins only, and Host checks on a loopback bind (DNS rebinding)."""

from pathlib import Path

import httpx
import pytest

from hllama.config import load_settings
from hllama.server.security import is_loopback, origin_pattern

from .liveserver import live_server


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
    assert is_loopback("localhost") and is_loopback("127.0.0.5") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")
    assert origin_pattern([]).startswith("^(")
