"""Fill-in-the-middle formats: which one a tokenizer knows, and the prompt each builds."""

from pathlib import Path

import pytest

from hllama.engine import folder_can_infill
from hllama.engine.infill import infill_format


class Vocabulary:
    """Just what infill_format asks of a tokenizer."""

    def __init__(self, *tokens: str) -> None:
        self.tokens = {token: index for index, token in enumerate(["a", "b", *tokens])}

    def get_vocab(self) -> dict[str, int]:
        return self.tokens


@pytest.mark.parametrize("tokens, prompt", [
    (("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"), "<|fim_prefix|>P{}<|fim_suffix|>S<|fim_middle|>"),
    (("<fim_prefix>", "<fim_suffix>", "<fim_middle>"), "<fim_prefix>P{}<fim_suffix>S<fim_middle>"),
    (("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"), "<｜fim▁begin｜>P{}<｜fim▁hole｜>S<｜fim▁end｜>"),
    (("▁<PRE>", "▁<SUF>", "▁<MID>"), "<PRE> P{} <SUF>S <MID>"),  # CodeLlama's pieces carry a space mark
    (("[SUFFIX]", "[PREFIX]"), "[SUFFIX]S[PREFIX]P{}"),
])
def test_each_family_gets_its_own_layout(tokens: tuple[str, ...], prompt: str):
    fmt = infill_format(Vocabulary(*tokens))
    assert fmt is not None and fmt.prompt("P{}", "S") == prompt  # braces in code stay as they are


def test_no_infill_tokens_no_format(tmp_path: Path):
    assert infill_format(Vocabulary("<|fim_prefix|>", "<|fim_middle|>")) is None  # all of them, or none
    assert not folder_can_infill(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"added_tokens": [{"content": "<fim_prefix>"}, '
                                             '{"content": "<fim_suffix>"}, {"content": "<fim_middle>"}]}')
    assert folder_can_infill(tmp_path)
