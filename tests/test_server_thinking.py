"""Thinking through both APIs, with a tiny model trained to think before it answers."""

from pathlib import Path

import httpx
import ollama
import openai
import pytest

from hllama.config import load_settings

from .liveserver import live_server
from .tinymodel import CHATS, REPO_ID, THINKING_REPO_ID, THOUGHT, install_into_cache

QUESTION, ANSWER = CHATS[0]
ASK = [{"role": "user", "content": QUESTION}]
GREEDY = {"temperature": 0}


@pytest.fixture
def url(thinking_model_dir: Path, tiny_cache: Path):
    install_into_cache(thinking_model_dir, tiny_cache, repo_id=THINKING_REPO_ID)
    with live_server(load_settings(), watch=False) as base:
        yield base


def test_ollama_chat_and_generate_keep_thinking_apart(url: str):
    client = ollama.Client(host=url)
    assert "thinking" in client.show(THINKING_REPO_ID).capabilities
    assert "thinking" not in client.show(REPO_ID).capabilities
    reply = client.chat(THINKING_REPO_ID, messages=ASK, options=GREEDY).message  # thinks by default
    assert (reply.thinking, reply.content) == (THOUGHT, ANSWER)

    chunks = list(client.chat(THINKING_REPO_ID, messages=ASK, options=GREEDY, think=True, stream=True))
    assert "".join(chunk.message.thinking or "" for chunk in chunks) == THOUGHT
    assert "".join(chunk.message.content for chunk in chunks) == ANSWER
    assert chunks[0].message.thinking and not chunks[0].message.content  # thinking comes first, in chunks of its own

    told_not_to = client.chat(THINKING_REPO_ID, messages=ASK, options=GREEDY, think=False).message
    assert (told_not_to.thinking, told_not_to.content) == (None, ANSWER)

    generated = client.generate(THINKING_REPO_ID, QUESTION, options=GREEDY)
    assert (generated.thinking, generated.response) == (THOUGHT, ANSWER)
    pieces = list(client.generate(THINKING_REPO_ID, QUESTION, options=GREEDY, stream=True))
    assert "".join(piece.thinking or "" for piece in pieces) == THOUGHT
    assert "".join(piece.response for piece in pieces) == ANSWER


def test_openai_reasoning(url: str):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    message = client.chat.completions.create(model=THINKING_REPO_ID, messages=ASK, temperature=0).choices[0].message
    assert (message.reasoning, message.content) == (THOUGHT, ANSWER)
    chunks = list(client.chat.completions.create(model=THINKING_REPO_ID, messages=ASK, temperature=0, stream=True))
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    assert deltas[0].role == "assistant"
    assert "".join(getattr(delta, "reasoning", None) or "" for delta in deltas) == THOUGHT
    assert "".join(delta.content or "" for delta in deltas) == ANSWER
    quick = client.chat.completions.create(model=THINKING_REPO_ID, messages=ASK, temperature=0,
                                           reasoning_effort="none").choices[0].message
    assert (getattr(quick, "reasoning", None), quick.content) == (None, ANSWER)


@pytest.mark.parametrize("path, body, message", [
    ("/api/chat", {"model": REPO_ID, "messages": ASK, "think": True}, f"{REPO_ID} does not support thinking"),
    ("/api/chat", {"model": THINKING_REPO_ID, "messages": ASK, "think": "extreme"}, "invalid think"),
    ("/v1/chat/completions", {"model": THINKING_REPO_ID, "messages": ASK, "reasoning_effort": "extreme"},
     "invalid reasoning effort 'extreme'"),
])
def test_bad_thinking_requests(url: str, path: str, body: dict, message: str):
    response = httpx.post(url + path, json={**body, "stream": False}, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["message"] if isinstance(error, dict) else error).startswith(message), error
