"""Images for vision models through Ollama's and OpenAI's APIs, with a tiny Llava; bad images are 400s."""

import base64
import io
import struct
import zlib
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest
from PIL import Image

from hllama.config import load_settings

from .liveserver import live_server
from .tinymodel import IMAGE_TOKENS, REPO_ID, VISION_REPO_ID, install_into_cache

ASK = "What is in the picture?"


def _png(width: int = 40, height: int = 30, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that says it is ``width`` x ``height`` and holds nothing: refused before anything is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def url(tiny_cache: Path, vision_model_dir: Path):
    install_into_cache(vision_model_dir, tiny_cache, repo_id=VISION_REPO_ID)
    with live_server(load_settings(), watch=False) as base:
        yield base


def test_an_image_reaches_the_model_through_both_apis(url: str):
    client = ollama.Client(host=url)
    options = {"temperature": 0, "num_predict": 5}
    plain = client.chat(VISION_REPO_ID, messages=[{"role": "user", "content": ASK}], options=options)
    seen = client.chat(VISION_REPO_ID, messages=[{"role": "user", "content": ASK, "images": [_png()]}],
                       options=options)
    assert seen.eval_count == 5 and seen.prompt_eval_count == plain.prompt_eval_count + IMAGE_TOKENS
    two = client.chat(VISION_REPO_ID, messages=[{"role": "user", "content": ASK,
                                                 "images": [_png(), _png(color=(0, 0, 255))]}], options=options)
    assert two.prompt_eval_count == plain.prompt_eval_count + 2 * IMAGE_TOKENS
    generated = client.generate(VISION_REPO_ID, ASK, images=[_png()], options=options)
    assert generated.eval_count == 5 and generated.prompt_eval_count == seen.prompt_eval_count
    assert "vision" in client.show(VISION_REPO_ID).capabilities
    assert "vision" not in client.show(REPO_ID).capabilities

    chat = openai.OpenAI(base_url=f"{url}/v1", api_key="unused").chat.completions.create(
        model=VISION_REPO_ID, max_tokens=5, temperature=0, messages=[{"role": "user", "content": [
            {"type": "text", "text": ASK},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _b64(_png())}}]}])
    assert chat.usage.completion_tokens == 5 and chat.usage.prompt_tokens == seen.prompt_eval_count


def test_an_image_for_a_model_that_cannot_see_is_refused(url: str):
    response = httpx.post(f"{url}/api/chat", json={"model": REPO_ID, "stream": False, "messages": [
        {"role": "user", "content": ASK, "images": [_b64(_png())]}]}, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"] == f"{REPO_ID} does not support images (it is not a vision model)"


@pytest.mark.parametrize(("image", "problem"), [
    ("not base64!", "not base64 text of an image"),
    (_b64(b"just some text, not a picture"), "not an image"),
    (_b64(_png()[:60]), "the image cannot be decoded"),
    (_b64(_png_header(20000, 20000)), "more than 40,000,000 pixels"),
    (_b64(_png_header(8000, 6000)), "a 8000x6000 image has more than 40,000,000 pixels"),
])
def test_bad_images_are_400s_naming_the_problem(url: str, image: str, problem: str):
    response = httpx.post(f"{url}/api/chat", json={"model": VISION_REPO_ID, "stream": False, "messages": [
        {"role": "user", "content": ASK, "images": [image]}]}, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"].startswith("messages[0].images[0]: ") and problem in response.json()["error"]


@pytest.mark.parametrize(("image_url", "problem"), [
    ("https://example.com/cat.png", "remote image URLs are not fetched"),
    ("data:text/plain;base64," + _b64(b"hello"), "is not an image"),
    ("data:image/png," + "rawbytes", "a data: URI with base64 content"),
])
def test_bad_image_urls_are_400s(url: str, image_url: str, problem: str):
    response = httpx.post(f"{url}/v1/chat/completions", json={"model": VISION_REPO_ID, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}}]}]}, timeout=60)
    assert response.status_code == 400 and problem in response.json()["error"]["message"]


def test_images_through_the_messages_and_responses_apis(url: str):
    message = anthropic.Anthropic(base_url=url, api_key="unused").messages.create(
        model=VISION_REPO_ID, max_tokens=5, extra_body={"temperature": 0}, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": _b64(_png())}},
            {"type": "text", "text": ASK}]}])
    plain = ollama.Client(host=url).chat(VISION_REPO_ID, messages=[{"role": "user", "content": ASK}],
                                         options={"temperature": 0, "num_predict": 1})
    assert message.usage.output_tokens == 5 and message.usage.input_tokens == plain.prompt_eval_count + IMAGE_TOKENS
    response = openai.OpenAI(base_url=f"{url}/v1", api_key="unused").responses.create(
        model=VISION_REPO_ID, temperature=0, max_output_tokens=5, input=[{"role": "user", "content": [
            {"type": "input_text", "text": ASK},
            {"type": "input_image", "image_url": "data:image/png;base64," + _b64(_png())}]}])
    assert response.usage.input_tokens == plain.prompt_eval_count + IMAGE_TOKENS


def test_run_attaches_images_named_or_given(capsys, tiny_cache: Path, vision_model_dir: Path, tmp_path: Path,
                                            monkeypatch):
    from hllama.cli import main
    from hllama.cli.chat import _attached

    install_into_cache(vision_model_dir, tiny_cache, repo_id=VISION_REPO_ID)
    (tmp_path / "photo.png").write_bytes(_png())
    monkeypatch.chdir(tmp_path)
    text, images = _attached("what is in ./photo.png? and in ./missing.png")
    assert text == "what is in ? and in ./missing.png" and images == [_png()]
    capsys.readouterr()
    assert main(["run", VISION_REPO_ID, "what is in ./photo.png?", "--num-predict", "3", "--verbose"]) == 0
    assert "prompt eval count:" in capsys.readouterr().err.lower()
    assert main(["run", VISION_REPO_ID, "describe it", "--image", "photo.png", "--num-predict", "3"]) == 0
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert main(["run", VISION_REPO_ID, "describe it", "--image", "broken.png"]) != 0
    error = capsys.readouterr().err.strip()
    assert error == "Error: broken.png: not an image"
    assert main(["run", REPO_ID, "describe it", "--image", "photo.png"]) != 0
    assert "does not support images" in capsys.readouterr().err


def test_the_estimate_counts_the_vision_tower(vision_model_dir: Path):
    from transformers import AutoModelForImageTextToText

    from hllama.models.footprint import local_footprint

    model = AutoModelForImageTextToText.from_pretrained(vision_model_dir)
    tower = sum(parameter.numel() for parameter in model.model.vision_tower.parameters())
    assert tower > 0 and local_footprint(vision_model_dir).parameters == model.num_parameters()


def test_count_tokens_counts_an_images_tokens(url: str):
    client = anthropic.Anthropic(base_url=url, api_key="unused")
    plain = client.messages.count_tokens(model=VISION_REPO_ID, messages=[{"role": "user", "content": ASK}])
    seen = client.messages.count_tokens(model=VISION_REPO_ID, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": _b64(_png())}},
        {"type": "text", "text": ASK}]}])
    assert seen.input_tokens == plain.input_tokens + IMAGE_TOKENS
