"""Embeddings: one vector per text, from an embedding model or from any loaded language model.

Pooling follows the model's sentence-transformers configuration (``1_Pooling/config.json``: CLS, mean
or last token) when it has one, else the mean of the last hidden states. Texts longer than the
model's context are cut to it, or refused when the caller asks not to truncate.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hllama.engine.tokens import fewest_tokens, within
from hllama.errors import InvalidOption, RequestCancelled

Pooling = Literal["mean", "cls", "lasttoken"]


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


def pooling_of(folder: Path) -> Pooling:
    """The pooling a sentence-transformers model was trained with; mean when it does not say."""
    try:
        config = json.loads((folder / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    if config.get("pooling_mode_lasttoken"):
        return "lasttoken"
    return "mean"


#: The most texts one request embeds (OpenAI's and Ollama's limit): each is a forward pass of its own.
MAX_INPUTS = 2048


def embed(model: Any, tokenizer: Any, texts: list[str], *, pooling: Pooling, context: int | None,
          truncate: bool = True, cancel: threading.Event | None = None) -> Embeddings:
    """Raw (not normalized) vectors, one text at a time: no padding, so no pad token is needed. ``cancel`` set
    (its client is gone) stops it before the next text, with :class:`RequestCancelled`."""
    import torch

    vectors, tokens = [], 0
    body = getattr(model, "base_model", model)  # the transformer without its language-model head
    device = next(model.parameters()).device
    for done, text in enumerate(texts):
        if cancel is not None and cancel.is_set():
            raise RequestCancelled(f"embedding stopped after {done} of {len(texts)} inputs: the client is gone")
        if context and not truncate and (least := fewest_tokens(tokenizer, text)) > context:
            raise InvalidOption(f"the input has at least {least} tokens, more than the context of {context}; "
                                "allow truncate to cut it")
        ids = tokenizer(within(tokenizer, text, context) if context else text)["input_ids"]
        if not ids:
            raise InvalidOption("an input has no tokens to embed (an empty string?)")
        if context and len(ids) > context:
            if not truncate:
                raise InvalidOption(f"the input has {len(ids)} tokens, more than the context of {context}; "
                                    "allow truncate to cut it")
            ids = ids[:context]
        tokens += len(ids)
        with torch.inference_mode():
            hidden = body(input_ids=torch.tensor([ids], device=device)).last_hidden_state[0]
        pooled = hidden[0] if pooling == "cls" else hidden[-1] if pooling == "lasttoken" else hidden.mean(0)
        vectors.append(pooled.float().tolist())
    return Embeddings(vectors, tokens)


def normalized(vector: list[float], dimensions: int | None = None) -> list[float]:
    """Unit length, after keeping the first ``dimensions`` values (Matryoshka-style shortening)."""
    kept = vector[:dimensions] if dimensions else vector
    norm = math.sqrt(sum(value * value for value in kept)) or 1.0
    return [value / norm for value in kept]
