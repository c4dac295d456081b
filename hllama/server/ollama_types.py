"""Ollama's wire format: request bodies (lenient, as Ollama's Go decoder is) and the settings they carry.

Unknown fields are ignored; unknown ``options`` keys are logged and ignored, as Ollama does. Values
of the wrong type or out of range are a 400 with the option's name.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hllama.aliases.resolve import Overrides
from hllama.conversation import ChatMessage, Message, ThinkLevel, ToolCall
from hllama.engine import MAX_INPUTS
from hllama.errors import InvalidOption
from hllama.options import OLLAMA_IGNORED_OPTIONS, SYNONYMS, Parameters, parse_duration
from hllama.server.body import Lenient, required
from hllama.validation import first_problem

log = logging.getLogger("hllama.server")


class OllamaFunction(Lenient):
    name: str = Field(description="the tool's name")
    arguments: dict[str, Any] = Field(default_factory=dict, description="its arguments, as a JSON object")


class OllamaToolCall(Lenient):
    function: OllamaFunction = Field(description="the function called")


class OllamaMessage(Lenient):
    role: str = Field(description="system, user, assistant or tool")
    content: str = Field("", description="the message's text")
    tool_calls: list[OllamaToolCall] | None = Field(None, description="calls an assistant message made")
    tool_name: str | None = Field(None, description="the tool whose result a tool message carries")
    thinking: str | None = Field(None, description="an assistant message's thinking")
    images: list[str] | None = Field(None, description="base64 images, for a vision model")


class _Generation(Lenient):
    model: str = Field("", description="an alias, a Hub repo id or a local model")
    format: str | dict[str, Any] | None = Field(None, description='"json", or a JSON schema the answer follows')
    options: dict[str, Any] | None = Field(None, description="generation parameters (Ollama's names or hllama's)")
    stream: bool = Field(True, description="NDJSON chunks as they are generated, or one object")
    keep_alive: float | str | None = Field(None, description="how long the model stays loaded: seconds or '5m'")
    think: bool | ThinkLevel | None = Field(None, description="a thinking model's thinking: off, on, or a level")
    logprobs: bool = Field(False, description="each answer token's log-probability")
    top_logprobs: int = Field(0, ge=0, le=20, description="and this many likeliest alternatives")
    truncate: bool = Field(True, description="drop the oldest turns (embed: cut a text) that do not fit the "
                                             "context, else refuse the request")
    shift: bool = Field(True, description="an answer that fills the window goes on after more of the oldest turns "
                                          "are dropped, else it ends there (done_reason length)")

    @property
    def logprob_alternatives(self) -> int | None:
        """None: no log-probabilities; else how many alternatives with each token."""
        return self.top_logprobs if self.logprobs or self.top_logprobs else None


class ChatRequest(_Generation):
    model_config = ConfigDict(json_schema_extra=required("model"))

    messages: list[OllamaMessage] = Field(default_factory=list, description="the conversation; none: load the model")
    tools: list[dict[str, Any]] | None = Field(None, description="function definitions the model may call")


class GenerateRequest(_Generation):
    model_config = ConfigDict(json_schema_extra=required("model"))

    prompt: str = Field("", description="the prompt; empty: load the model")
    system: str | None = Field(None, description="a system prompt instead of the alias's")
    template: str | None = Field(None, description="a Jinja chat template instead of the model's")
    context: list[int] | None = Field(None, description="the tokens of an earlier answer, to continue from")
    raw: bool = Field(False, description="send the prompt as it is, without the chat template")
    suffix: str = Field("", description="text after the insertion point (fill in the middle)")
    images: list[str] | None = Field(None, description="base64 images, for a vision model")


class EmbedRequest(_Generation):
    """``/api/embed``; ``/api/embeddings`` (the older route) sends ``prompt`` instead of ``input``."""

    model_config = ConfigDict(json_schema_extra=required("model"))

    input: str | Annotated[list[str], Field(max_length=MAX_INPUTS)] = Field(
        "", description=f"a text or a list of texts to embed (at most {MAX_INPUTS})")
    prompt: str = Field("", description="the older route's one text")
    dimensions: int | None = Field(None, ge=1, description="keep only this many leading dimensions")

    @property
    def texts(self) -> list[str]:
        """An empty input only loads the model."""
        if isinstance(self.input, list):
            return self.input
        return [text] if (text := self.input or self.prompt) else []


class NameRequest(Lenient):
    """``/api/show``, ``/api/delete``, ``/api/pull``: ``model``, or the deprecated ``name``."""

    model_config = ConfigDict(json_schema_extra=required(either=("model", "name")))

    model: str = Field("", description="the model or alias")
    name: str = Field("", description="the same, under its deprecated name")
    stream: bool = Field(True, description="progress as NDJSON (pull)")
    verbose: bool = Field(False, description="accepted for Ollama's clients; no effect")

    @property
    def target(self) -> str:
        return self.model or self.name


class CopyRequest(Lenient):
    model_config = ConfigDict(json_schema_extra=required("source", "destination"))

    source: str = Field("", description="an alias or a downloaded model")
    destination: str = Field("", description="the new alias's name")


class CreateRequest(Lenient):
    model_config = ConfigDict(json_schema_extra=required("from", either=("model", "name")))

    model: str = Field("", description="the new alias's name")
    name: str = Field("", description="the same, under its deprecated name")
    from_: str | None = Field(None, alias="from", description="an alias, a Hub repo id or an absolute model path")
    system: str | None = Field(None, description="its system prompt")
    template: str | None = Field(None, description="its Jinja chat template")
    license: str | list[str] | None = Field(None, description="its license text")
    parameters: dict[str, Any] | None = Field(None, description="its generation parameters")
    messages: list[OllamaMessage] | None = Field(None, description="its seed conversation")
    quantize: str | None = Field(None, description="q8_0 or q4_K_M (8-bit or 4-bit loading), or none")
    files: dict[str, str] | None = Field(None, description="uploaded files: not supported")
    adapters: dict[str, str] | None = Field(None, description="adapters: not supported")
    stream: bool = Field(True, description="statuses as NDJSON")


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
    for number, message in enumerate(request_messages):
        role = message.role.lower()
        if role not in ("system", "user", "assistant", "tool"):
            raise InvalidOption(f"messages with role '{message.role}' are not supported")
        calls = [ToolCall(name=call.function.name, arguments=call.function.arguments)
                 for call in message.tool_calls or []]
        messages.append(ChatMessage(role=role, content=message.content, tool_calls=calls or None,  # type: ignore[arg-type]
                                    tool_name=message.tool_name, thinking=message.thinking,
                                    images=decoded_images(message.images, where=f"messages[{number}].images")))
    return messages


def decoded_images(images: list[str] | None, *, where: str) -> list[bytes] | None:
    """Ollama's base64 ``images``, checked (each a 400 naming its place when it is not a usable image)."""
    from hllama.images import MAX_IMAGES, from_base64

    if not images:
        return None
    if len(images) > MAX_IMAGES:
        raise InvalidOption(f"{where}: at most {MAX_IMAGES} images")
    return [from_base64(image, where=f"{where}[{index}]") for index, image in enumerate(images)]


def wire_tool_calls(calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
    """Ollama's ``message.tool_calls``: arguments as a JSON object, an index per call."""
    return [{"function": {"index": index, "name": call.name, "arguments": call.arguments}}
            for index, call in enumerate(calls)]


class ErrorResponse(BaseModel):
    """Every error of Ollama's API."""

    error: str = Field(description="what went wrong, and where it says so, what to do")


def now_rfc3339() -> str:
    """UTC with a ``Z``, as Ollama writes ``created_at``."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def local_rfc3339(timestamp: float) -> str:
    """Local time with its offset, as Ollama writes ``modified_at`` and ``expires_at``."""
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="microseconds")


DoneReason = Literal["stop", "length", "load", "unload"]
