"""Embeddings through both APIs: a tiny BERT embedding model, and a language model's own."""

import base64
import math
import struct
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from hllama.config import load_settings
from hllama.engine import normalized

from .liveserver import live_server
from .tinymodel import CHATS, ENCODER_REPO_ID, REPO_ID, install_into_cache

TEXTS = ["The capital of France is Paris.", "Red is a primary color."]


@pytest.fixture
def url(encoder_model_dir: Path, tiny_cache: Path):
    install_into_cache(encoder_model_dir, tiny_cache, repo_id=ENCODER_REPO_ID)
    with live_server(load_settings(), watch=False) as base:
        yield base


def _cls_vector(folder: Path, text: str) -> list[float]:
    """What sentence-transformers computes for this model: the [CLS] position of the last hidden states."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)
    with torch.inference_mode():
        hidden = model(input_ids=torch.tensor([tokenizer(text)["input_ids"]])).last_hidden_state[0]
    return hidden[0].tolist()


def test_ollama_embed(url: str, encoder_model_dir: Path):
    client = ollama.Client(host=url)
    assert client.show(ENCODER_REPO_ID).capabilities == ["embedding"]
    result = client.embed(ENCODER_REPO_ID, TEXTS)
    assert len(result.embeddings) == 2 and all(len(vector) == 32 for vector in result.embeddings)
    assert result.embeddings[0] == pytest.approx(normalized(_cls_vector(encoder_model_dir, TEXTS[0])), abs=1e-5)
    assert all(math.isclose(sum(value * value for value in vector), 1, rel_tol=1e-5) for vector in result.embeddings)
    assert result.embeddings[0] != pytest.approx(result.embeddings[1])
    assert client.embed(ENCODER_REPO_ID, TEXTS[1]).embeddings == [result.embeddings[1]]  # one at a time, the same
    assert result.prompt_eval_count > 10 and result.total_duration >= result.load_duration > 0

    short = httpx.post(f"{url}/api/embed", json={"model": ENCODER_REPO_ID, "input": TEXTS[0], "dimensions": 8}).json()
    assert short["embeddings"][0] == pytest.approx(normalized(result.embeddings[0], 8))
    legacy = client.embeddings(ENCODER_REPO_ID, TEXTS[0]).embedding  # the older route: not normalized
    assert legacy == pytest.approx(_cls_vector(encoder_model_dir, TEXTS[0]), abs=1e-5)
    assert httpx.post(f"{url}/api/embed", json={"model": ENCODER_REPO_ID, "input": ""}).json()["embeddings"] == []


def test_a_language_model_embeds_too(url: str):
    vectors = ollama.Client(host=url).embed(REPO_ID, [CHATS[0][0]]).embeddings
    assert len(vectors[0]) == 64  # the tiny Llama's hidden size: the mean of its last hidden states


def test_openai_embeddings(url: str):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    floats = client.embeddings.create(model=ENCODER_REPO_ID, input=TEXTS)
    assert [item.index for item in floats.data] == [0, 1] and len(floats.data[0].embedding) == 32
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 10
    raw = httpx.post(f"{url}/v1/embeddings", json={"model": ENCODER_REPO_ID, "input": TEXTS[0],
                                                     "encoding_format": "base64", "dimensions": 16}).json()
    decoded = struct.unpack("<16f", base64.b64decode(raw["data"][0]["embedding"]))
    assert decoded == pytest.approx(normalized(floats.data[0].embedding, 16), abs=1e-6)


@pytest.mark.parametrize("path, body, status, message", [
    ("/api/chat", {"model": ENCODER_REPO_ID, "messages": [{"role": "user", "content": "hi"}]}, 400,
     f"{ENCODER_REPO_ID} does not support generation (it is an embedding model"),
    ("/api/embed", {"model": ENCODER_REPO_ID, "input": "word " * 100, "truncate": False}, 400,
     "the input has 401 tokens, more than the context of 64"),
    ("/api/embed", {"model": "nope", "input": "x"}, 404, "model 'nope' not found"),
    ("/v1/embeddings", {"model": ENCODER_REPO_ID, "input": [[1, 2, 3]]}, 400, "input must be a non-empty string"),
    ("/v1/embeddings", {"model": ENCODER_REPO_ID, "input": "x", "encoding_format": "int8"}, 400,
     "invalid encoding_format"),
])
def test_embedding_errors(url: str, path: str, body: dict, status: int, message: str):
    response = httpx.post(url + path, json={**body, "stream": False}, timeout=60)
    assert response.status_code == status
    error = response.json()["error"]
    assert (error["message"] if isinstance(error, dict) else error).startswith(message), error


def test_a_long_text_is_cut_to_the_context_by_default(url: str):
    assert len(ollama.Client(host=url).embed(ENCODER_REPO_ID, "word " * 100).embeddings[0]) == 32


def test_embedding_stops_between_inputs_once_its_client_is_gone(url: str, encoder_model_dir: Path):
    """The request as a client that leaves at once sends it, straight to the app: the body, then the disconnect."""
    import asyncio
    import json

    from hllama.config import load_settings
    from hllama.server import build_service, create_app

    service = build_service(load_settings())
    app = create_app(service, watch=False)
    body = json.dumps({"model": ENCODER_REPO_ID, "input": TEXTS * 1000}).encode()
    sent: list[dict] = []

    async def leaving_client() -> None:
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/api/embed", "raw_path": b"/api/embed",
                 "query_string": b"", "headers": [(b"content-type", b"application/json"), (b"host", b"127.0.0.1"),
                                                   (b"content-length", str(len(body)).encode())],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "scheme": "http", "http_version": "1.1",
                 "root_path": "", "app": app, "state": {}}
        await app(scope, receive, send)
        await service.scheduler.close()

    asyncio.run(leaving_client())
    [start] = [message for message in sent if message["type"] == "http.response.start"]
    answer = json.loads(b"".join(message.get("body", b"") for message in sent if message["type"] ==
                                 "http.response.body"))
    assert start["status"] == 499 and answer["error"].startswith("embedding stopped after ")
    done = int(answer["error"].split()[3])
    assert done < 2000 and answer["error"].endswith(" of 2000 inputs: the client is gone")


def test_embedding_stops_at_its_cancel(encoder_model_dir: Path):
    import threading

    from transformers import AutoModel, AutoTokenizer

    from hllama.engine.embed import embed
    from hllama.errors import RequestCancelled

    model, tokenizer = AutoModel.from_pretrained(encoder_model_dir), AutoTokenizer.from_pretrained(encoder_model_dir)
    cancel = threading.Event()
    seen = []

    def tokenizing(text, **kwargs):
        seen.append(text)
        if len(seen) == 3:
            cancel.set()  # the client leaves while the third input is embedded
        return tokenizer(text, **kwargs)

    with pytest.raises(RequestCancelled, match="after 3 of 10 inputs"):
        embed(model, tokenizing, TEXTS * 5, pooling="cls", context=64, cancel=cancel)
