"""Tool calls: offer a request's tools to the chat template, and find the calls in what the model writes.

Models write tool calls in one of a few shapes: Hermes-style blocks ``<tool_call>{"name": ...,
"arguments": {...}}</tool_call>`` (Qwen 2.5/3, Hermes, SmolLM3 and most fine-tunes), or the whole
answer as one JSON object (or a list of them) with ``name`` and ``arguments``/``parameters``
(Llama 3.x). Text outside the calls is the answer's content.

While streaming, :class:`ToolCallStream` passes content through and holds back what may be a call,
so a client never sees half a call as text.

:class:`ToolCalls` describes the grammar that holds each call's arguments to its tool's ``parameters``
schema, in the model's own format: from the point where the model opens a call (``auto``), or from the
first token of the answer when a call is required (vLLM's ``tool_choice``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from hllama.conversation import ToolCall
from hllama.engine.stops import StopMatcher
from hllama.errors import InvalidOption

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)(?:" + re.escape(CLOSE) + r"|$)", re.DOTALL)


def supports_tools(template: str | None) -> bool:
    """Whether a chat template renders the ``tools`` it is given (Ollama's ``tools`` capability)."""
    return bool(template) and "tools" in template


#: How a model writes its calls: "tagged" in ``<tool_call>`` blocks, "json" as the whole answer.
ToolStyle = Literal["tagged", "json"]


def tool_style(template: str | None) -> ToolStyle:
    """The format a chat template shows its model's calls in."""
    return "tagged" if template and OPEN in template else "json"


@dataclass(frozen=True)
class ToolCalls:
    """What a request's calls must look like, as the grammar that enforces it sees it (hashable, so cached).

    ``tools``: the JSON text of ``[[name, parameters schema], ...]``. ``choice``: "auto" (the model may answer
    in prose; a call it opens is held to the grammar from its opening marker, or from the answer's first
    character for models that answer with bare JSON), "required" (the answer is one or more calls), or a
    tool's name (the answer is one call to it). The grammar itself is built by :mod:`hllama.engine.grammar`.
    """

    tools: str
    style: ToolStyle
    choice: str = "auto"

    @classmethod
    def of(cls, tools: list[dict[str, Any]], *, style: ToolStyle, choice: str = "auto") -> ToolCalls | None:
        """From OpenAI's (and Ollama's) function definitions; a named ``choice`` must be one of them. None when
        no tool has a name (nothing to hold a call to) and none is required."""
        functions = [tool.get("function", tool) for tool in tools if isinstance(tool, dict)]
        named = [[function["name"], function.get("parameters") or {"type": "object"}]
                 for function in functions if isinstance(function, dict) and isinstance(function.get("name"), str)]
        if choice not in ("auto", "required"):
            named = [item for item in named if item[0] == choice]
            if not named:
                raise InvalidOption(f"tool_choice: no tool named '{choice}' among the request's tools")
        if not named and choice != "auto":
            raise InvalidOption("tool_choice: no function with a name to call")
        if not named:
            return None
        return cls(json.dumps(named, ensure_ascii=False), style, choice)

    @property
    def lazy(self) -> bool:
        """Whether the grammar waits for the model to open a call."""
        return self.choice == "auto"

    @property
    def functions(self) -> list[tuple[str, Any]]:
        """Each callable tool's name and parameters schema."""
        return [(name, parameters) for name, parameters in json.loads(self.tools)]

    @property
    def arguments_key(self) -> str:
        return "arguments" if self.style == "tagged" else "parameters"  # Llama 3's templates ask for "parameters"


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """The content and the tool calls in a whole answer; text that is no valid call stays content."""
    if OPEN in text:
        calls = [call for block in _BLOCK.findall(text) for call in _calls_in(block)]
        if calls:
            return _BLOCK.sub("", text).strip(), calls
        return text, []
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        calls = _calls_in(stripped)
        if calls:
            return "", calls
    return text, []


def _calls_in(text: str) -> list[ToolCall]:
    try:
        value = json.loads(text)
    except ValueError:
        return []
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return []
        arguments = item.get("arguments", item.get("parameters", {}))
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return []
        if not isinstance(arguments, dict):
            return []
        calls.append(ToolCall(name=item["name"], arguments=arguments))
    return calls


class ToolCallStream:
    """Streamed content with tool calls taken out.

    ``feed`` returns the content that is safe to show now: text from ``<tool_call>`` on (and any tail
    that could begin it) is held back, and so is a whole answer that begins like JSON. ``finish``
    parses what was held and returns the rest of the content and the calls.
    """

    def __init__(self) -> None:
        self.seen = ""
        self._content = StopMatcher([OPEN])  # content ends where the first call begins
        self._json_shaped: bool | None = None  # known at the first character that is not a space

    def feed(self, piece: str) -> str:
        self.seen += piece
        if self._json_shaped is None and (head := self.seen.lstrip()):
            self._json_shaped = head.startswith(("{", "["))
        if self._json_shaped:
            return ""  # a JSON-shaped answer is a call or content only once it is whole
        return self._content.feed(self.seen)

    def finish(self) -> tuple[str, list[ToolCall]]:
        held = self.seen[len(self._content.text):]
        content, calls = parse_tool_calls(held)
        return (content, calls) if calls else (held, [])
