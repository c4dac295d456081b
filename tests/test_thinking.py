"""Separating a model's thinking from its answer, whole and streamed."""

import pytest

from hllama.engine import supports_thinking
from hllama.engine.thinking import ThinkingSplitter, opens_thinking

# (model output, whether the prompt opened the block, thinking, content)
ANSWERS = [
    ("<think>\nParis is the capital.\n</think>\n\nThe capital is Paris.", False, "\nParis is the capital.\n",
     "The capital is Paris."),
    ("Paris is the capital.</think>The capital is Paris.", True, "Paris is the capital.", "The capital is Paris."),
    ("The capital is Paris.", False, "", "The capital is Paris."),
    ("  <thinking is fun>", False, "", "  <thinking is fun>"),
    ("<think>still thinking", False, "still thinking", ""),
    ("<thi", False, "", "<thi"),
    ("<think></think>Short.", False, "", "Short."),
]


@pytest.mark.parametrize("text, opened, thinking, content", ANSWERS)
@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_thinking_and_content_come_apart(text: str, opened: bool, thinking: str, content: str, size: int):
    splitter = ThinkingSplitter(thinking_open=opened)
    thought, said = "", ""
    for start in range(0, len(text), size):
        piece_thought, piece_said = splitter.feed(text[start:start + size])
        thought, said = thought + piece_thought, said + piece_said
        assert "<think" not in said or "<think" in content
        assert "</" not in thought
    rest_thought, rest_said = splitter.finish()
    assert (thought + rest_thought, said + rest_said) == (thinking, content)
    assert splitter.thinking == thinking


def test_capability_and_open_prompts():
    assert supports_thinking("{% if enable_thinking is false %}<think>\n\n</think>{% endif %}")
    assert not supports_thinking("{{ messages }}") and not supports_thinking(None)
    assert opens_thinking("<|im_start|>assistant\n<think>\n")
    assert not opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")
