"""From a resolved alias and a conversation to prompt tokens that fit the context.

The conversation is: the system prompt (with the JSON-mode instruction when asked), the alias's
seed messages, then the history. It is rendered with the modelfile's template, else the
tokenizer's chat template, else a plain ``User:``/``Assistant:`` format. When ``ctx`` is set,
whole turns are dropped from the oldest until the prompt fits; the system prompt and the newest
user message always stay.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hllama.errors import PromptTooLong
from hllama.modelfile import Message
from hllama.resolve import Resolved

JSON_INSTRUCTION = "Answer with valid JSON only: a single JSON value, with no text before or after it."

#: Where the plain format's next turn would begin; used as an extra stop string.
FALLBACK_STOPS = ("\nUser:",)


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    text: str
    messages: list[dict[str, str]]
    dropped_turns: int = 0
    extra_stops: tuple[str, ...] = field(default_factory=tuple)


def conversation(resolved: Resolved, history: Sequence[Message], *, json_schema: Any = None
                 ) -> list[dict[str, str]]:
    """System prompt, seed messages, then the history; a system message in the history wins.

    JSON mode (or a JSON schema, from an API's ``format``) adds its instruction to the system prompt.
    """
    messages = [message.model_dump() for message in [*resolved.messages, *history]]
    system = None if messages and messages[0]["role"] == "system" else resolved.system
    instruction = _json_instruction(json_schema) if resolved.parameters.json_mode or json_schema else None
    if instruction:
        if system is None and messages and messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": f"{messages[0]['content']}\n\n{instruction}"}
        else:
            system = f"{system}\n\n{instruction}" if system else instruction
    return ([{"role": "system", "content": system}] if system else []) + messages


def _json_instruction(schema: Any) -> str:
    if not isinstance(schema, dict):
        return JSON_INSTRUCTION
    return f"{JSON_INSTRUCTION} It must match this JSON schema: {json.dumps(schema, ensure_ascii=False)}"


def build_prompt(tokenizer: Any, messages: list[dict[str, str]], *, template: str | None = None,
                 ctx: int | None = None) -> Prompt:
    """Render and tokenize, dropping the oldest whole turns while the prompt does not fit ``ctx``."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = _turns(messages[len(system):])
    dropped = 0
    while True:
        kept = system + [message for turn in turns[dropped:] for message in turn]
        text, extra_stops = render(tokenizer, kept, template=template)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if ctx is None or len(ids) < ctx:  # room for at least one new token
            return Prompt(ids=ids, text=text, messages=kept, dropped_turns=dropped, extra_stops=extra_stops)
        if dropped >= len(turns) - 1:
            raise PromptTooLong(len(ids) + 1, ctx)
        dropped += 1


def render(tokenizer: Any, messages: list[dict[str, str]], *, template: str | None = None
           ) -> tuple[str, tuple[str, ...]]:
    """The prompt text, and the stop strings the format itself needs."""
    if template or getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=True)
        return text, ()
    return plain_format(messages), FALLBACK_STOPS


def plain_format(messages: list[dict[str, str]]) -> str:
    """For tokenizers without a chat template."""
    parts = []
    for message in messages:
        if message["role"] == "system":
            parts.append(f"{message['content']}\n\n")
        else:
            parts.append(f"{message['role'].capitalize()}: {message['content']}\n")
    return "".join(parts) + "Assistant:"


def _turns(messages: list[dict[str, str]]) -> list[list[dict[str, str]]]:
    """Each turn starts at a user message and holds the replies that follow it."""
    turns: list[list[dict[str, str]]] = []
    for message in messages:
        if message["role"] == "user" or not turns:
            turns.append([message])
        else:
            turns[-1].append(message)
    return turns
