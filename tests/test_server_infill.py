"""Fill in the middle (``suffix`` on /api/generate) with a tiny model trained on one snippet."""

from pathlib import Path

import httpx
import ollama
import openai
import pytest

from hllama.config import load_settings

from .liveserver import live_server
from .tinymodel import CODE_MIDDLE, CODE_PREFIX, CODE_SUFFIX, CODER_REPO_ID, REPO_ID, install_into_cache


@pytest.fixture
def url(coder_model_dir: Path, tiny_cache: Path):
    install_into_cache(coder_model_dir, tiny_cache, repo_id=CODER_REPO_ID)
    with live_server(load_settings(), watch=False) as base:
        yield base


def test_suffix_fills_the_middle(url: str):
    client = ollama.Client(host=url)
    assert "insert" in client.show(CODER_REPO_ID).capabilities
    assert "insert" not in client.show(REPO_ID).capabilities
    filled = client.generate(CODER_REPO_ID, CODE_PREFIX, suffix=CODE_SUFFIX, options={"temperature": 0})
    assert filled.response == CODE_MIDDLE and filled.done_reason == "stop" and filled.context is None
    streamed = client.generate(CODER_REPO_ID, CODE_PREFIX, suffix=CODE_SUFFIX, options={"temperature": 0},
                               stream=True)
    assert "".join(chunk.response for chunk in streamed) == CODE_MIDDLE


def test_openai_completions_fill_the_middle_too(url: str):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    filled = client.completions.create(model=CODER_REPO_ID, prompt=CODE_PREFIX, suffix=CODE_SUFFIX, temperature=0)
    assert filled.choices[0].text == CODE_MIDDLE


def test_a_model_without_infill_tokens(url: str):
    response = httpx.post(f"{url}/api/generate", json={"model": REPO_ID, "prompt": "def f():", "suffix": "\n",
                                                       "stream": False}, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"] == (f"{REPO_ID} does not support insert "
                                        "(its tokenizer has no fill-in-the-middle tokens)")
