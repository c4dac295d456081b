"""Fill in the middle: code models trained to write what goes between a prefix and a suffix.

Each family marks the parts with its own special tokens; the tokenizer's vocabulary tells which
(if any) a model knows. This is Ollama's ``suffix`` on ``/api/generate`` (its ``insert`` capability).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hllama.engine.tokens import token_ids
from hllama.errors import NotSupported


@dataclass(frozen=True)
class InfillFormat:
    tokens: tuple[str, ...]  # the special tokens that identify it
    layout: str  # where the prefix and suffix go

    def prompt(self, prefix: str, suffix: str) -> str:
        return self.layout.format(prefix=prefix, suffix=suffix)


FORMATS = (
    InfillFormat(("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder, Qwen3-Coder
                 "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"),
    InfillFormat(("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, SantaCoder, Granite code
                 "<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>"),
    InfillFormat(("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek-Coder
                 "<｜fim▁begin｜>{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>"),
    InfillFormat(("<PRE>", "<SUF>", "<MID>"), "<PRE> {prefix} <SUF>{suffix} <MID>"),  # CodeLlama
    InfillFormat(("[SUFFIX]", "[PREFIX]"), "[SUFFIX]{suffix}[PREFIX]{prefix}"),  # Codestral (suffix first)
)


def infill_format(tokenizer: Any) -> InfillFormat | None:
    """The format whose three tokens the tokenizer knows, if any."""
    vocabulary = tokenizer.get_vocab()
    for fmt in FORMATS:
        if all(token in vocabulary or f"▁{token}" in vocabulary for token in fmt.tokens):
            return fmt
    return None


def infill_ids(tokenizer: Any, prefix: str, suffix: str, *, model: str, context: int | None = None) -> list[int]:
    """The prompt of a fill-in-the-middle request, in the model's own format (refused, untokenized, where it
    surely does not fit ``context``)."""
    fmt = infill_format(tokenizer)
    if fmt is None:
        raise NotSupported(model, "insert", "its tokenizer has no fill-in-the-middle tokens")
    return token_ids(tokenizer, fmt.prompt(prefix, suffix), context=context, add_special_tokens=True)


def folder_can_infill(folder: Path) -> bool:
    """The same question from the tokenizer files alone, without loading anything (for ``/api/show``)."""
    text = ""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        try:
            text += (folder / name).read_text(encoding="utf-8")
        except OSError:
            continue
    return any(all(token in text for token in fmt.tokens) for fmt in FORMATS)
