"""The requests coding agents send, as recorded from the real clients through ``hllama launch`` (Claude Code 2.1.197
on ``/v1/messages``, Codex 0.171.0 on ``/v1/responses``), each a turn after a tool call: every part of them is
understood, and what stops them on the tiny model is only its context, said in the words each client acts on."""

import json
from pathlib import Path

import httpx
import pytest

from hllama.cli import main
from hllama.config import load_settings

from .liveserver import live_server
from .tinymodel import TOOL_REPO_ID, install_into_cache

RECORDED = Path(__file__).parent / "agents"


def _recorded(name: str) -> dict:
    return {**json.loads((RECORDED / name).read_text()), "model": "agentic"}


@pytest.fixture
def url(tiny_cache: Path, tool_model_dir: Path, hllama_home: Path):
    install_into_cache(tool_model_dir, tiny_cache, repo_id=TOOL_REPO_ID)
    assert main(["create", "--alias", "agentic", "--model", TOOL_REPO_ID]) == 0
    with live_server(load_settings(), watch=False) as base:
        yield base


def test_claude_codes_request_is_understood(url: str):
    body = _recorded("claude_code_2.1.197_messages.json")
    assert [message["role"] for message in body["messages"]] == ["user", "system", "assistant", "user"]
    assert body["thinking"] == {"type": "adaptive"} and "propertyNames" in json.dumps(body["tools"])
    counted = httpx.post(f"{url}/v1/messages/count_tokens?beta=true", json=body, timeout=120)
    assert counted.status_code == 200, counted.text
    tokens = counted.json()["input_tokens"]
    without = {**body, "messages": [message for message in body["messages"] if message["role"] != "system"]}
    fewer = httpx.post(f"{url}/v1/messages/count_tokens", json=without, timeout=120).json()["input_tokens"]
    assert tokens > fewer > 1_000  # its prompt and its 24 tools, and the mid-conversation instruction in it
    answer = httpx.post(f"{url}/v1/messages?beta=true", json=body, timeout=120)
    assert answer.status_code == 400
    error = answer.json()["error"]  # the words Claude Code compacts its history on
    assert error["type"] == "invalid_request_error"
    needed = error["message"].removeprefix("prompt is too long: ").split(" tokens > 256 maximum")[0]
    assert error["message"].startswith("prompt is too long: ") and 256 < int(needed) <= tokens + 1, error


def test_codexs_request_is_understood(url: str):
    body = _recorded("codex_0.171.0_responses.json")
    kinds = [tool["type"] for tool in body["tools"]]
    assert "namespace" in kinds and "web_search" in kinds and body["store"] is False
    counted = httpx.post(f"{url}/v1/responses/input_tokens", json=body, timeout=120)
    assert counted.status_code == 200, counted.text
    assert counted.json()["input_tokens"] > 1_000
    answer = httpx.post(f"{url}/v1/responses", json=body, timeout=120)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "context_length_exceeded", answer.text
