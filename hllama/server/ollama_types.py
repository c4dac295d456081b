"""Ollama's wire format: request bodies (lenient, as Ollama's Go decoder is) and the settings they carry.

Unknown fields are ignored; unknown ``options`` keys are logged and ignored, as Ollama does. Values
of the wrong type or out of range are a 400 with the option's name.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hllama.engine.prompt import ChatMessage
from hllama.engine.thinking import ThinkLevel
from hllama.engine.tools import ToolCall
from hllama.errors import InvalidOption
from hllama.modelfile import Message
from hllama.options import OLLAMA_IGNORED_OPTIONS, SYNONYMS, Parameters, parse_duration
from hllama.resolve import Overrides
from hllama.validation import first_problem

log = logging.getLogger("hllama.server")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class OllamaFunction(_Lenient):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class OllamaToolCall(_Lenient):
    function: OllamaFunction


class OllamaMessage(_Lenient):
    role: str
    content: str = ""
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: str | None = None
    thinking: str | None = None


class _Generation(_Lenient):
    model: str = ""
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    stream: bool = True
    keep_alive: float | str | None = None
    think: bool | ThinkLevel | None = None
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=20)

    @property
    def logprob_alternatives(self) -> int | None:
        """None: no log-probabilities; else how many alternatives with each token."""
        return self.top_logprobs if self.logprobs or self.top_logprobs else None


class ChatRequest(_Generation):
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None


class GenerateRequest(_Generation):
    prompt: str = ""
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    suffix: str = ""


class EmbedRequest(_Generation):
    """``/api/embed``; ``/api/embeddings`` (the older route) sends ``prompt`` instead of ``input``."""

    input: str | list[str] = ""
    prompt: str = ""
    truncate: bool = True
    dimensions: int | None = Field(None, ge=1)

    @property
    def texts(self) -> list[str]:
        """An empty input only loads the model."""
        if isinstance(self.input, list):
            return self.input
        return [text] if (text := self.input or self.prompt) else []


class NameRequest(_Lenient):
    """``/api/show``, ``/api/delete``, ``/api/pull``: ``model``, or the deprecated ``name``."""

    model: str = ""
    name: str = ""
    stream: bool = True
    verbose: bool = False

    @property
    def target(self) -> str:
        return self.model or self.name


class CopyRequest(_Lenient):
    source: str = ""
    destination: str = ""


class CreateRequest(_Lenient):
    model: str = ""
    name: str = ""
    from_: str | None = Field(None, alias="from")
    system: str | None = None
    template: str | None = None
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[OllamaMessage] | None = None
    quantize: str | None = None
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    stream: bool = True


def parameters_from_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """The ``options`` hllama understands; anything else is logged and dropped."""
    known = set(Parameters.model_fields) | set(SYNONYMS)
    kept = {}
    for key, value in (options or {}).items():
        if key in known:
            kept[key] = value
        elif key not in OLLAMA_IGNORED_OPTIONS:
            log.warning("invalid option provided: %s", key)
    return kept


def overrides(request: _Generation, *, system: str | None = None, template: str | None = None,
              extra: dict[str, Any] | None = None) -> tuple[Overrides, dict[str, Any] | None]:
    """The API layer of a request's settings, and the JSON schema its ``format`` asks for (if any)."""
    parameters = {**parameters_from_options(request.options), **(extra or {})}
    schema = None
    if request.format == "json":
        parameters["json_mode"] = True
    elif isinstance(request.format, dict):
        parameters["json_mode"] = True
        schema = request.format
    elif request.format not in (None, ""):
        raise InvalidOption("invalid format: use \"json\" or a JSON schema object")
    if request.keep_alive is not None:
        try:
            parameters["keep_alive"] = parse_duration(request.keep_alive)
        except ValueError as exc:
            raise InvalidOption(f"invalid keep_alive: {exc}") from None
    try:
        return Overrides.model_validate({"system": system, "template": template, "parameters": parameters}), schema
    except ValidationError as exc:
        name, problem = first_problem(exc, schema=Overrides)
        raise InvalidOption(f"option \"{name or 'options'}\": {problem}") from None


def messages_from(request_messages: list[OllamaMessage]) -> list[Message]:
    messages: list[Message] = []
    for message in request_messages:
        role = message.role.lower()
        if role not in ("system", "user", "assistant", "tool"):
            raise InvalidOption(f"messages with role '{message.role}' are not supported")
        calls = [ToolCall(name=call.function.name, arguments=call.function.arguments)
                 for call in message.tool_calls or []]
        messages.append(ChatMessage(role=role, content=message.content, tool_calls=calls or None,  # type: ignore[arg-type]
                                    tool_name=message.tool_name, thinking=message.thinking))
    return messages


def wire_tool_calls(calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
    """Ollama's ``message.tool_calls``: arguments as a JSON object, an index per call."""
    return [{"function": {"index": index, "name": call.name, "arguments": call.arguments}}
            for index, call in enumerate(calls)]


def now_rfc3339() -> str:
    """UTC with a ``Z``, as Ollama writes ``created_at``."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def local_rfc3339(timestamp: float) -> str:
    """Local time with its offset, as Ollama writes ``modified_at`` and ``expires_at``."""
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="microseconds")


DoneReason = Literal["stop", "length", "load", "unload"]
