"""Ollama's wire format: request bodies (lenient, as Ollama's Go decoder is), the settings they carry, and every
response body.

Unknown fields are ignored; unknown ``options`` keys are logged and ignored, as Ollama does. Values
of the wrong type or out of range are a 400 with the option's name. A response field declared with
:func:`~hllama.server.body.omitted` is left out when it has no value, as Ollama's ``omitempty`` does.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from hllama.aliases.resolve import Overrides
from hllama.conversation import ChatMessage, Message, ThinkLevel, ToolCall
from hllama.engine import MAX_INPUTS
from hllama.errors import InvalidOption
from hllama.options import OLLAMA_IGNORED_OPTIONS, SYNONYMS, Parameters, parse_duration
from hllama.server.body import Lenient, Reply, omitted, required
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


class ErrorResponse(BaseModel):
    """Every error of Ollama's API."""

    error: str = Field(description="what went wrong, and where it says so, what to do")


def now_rfc3339() -> str:
    """UTC with a ``Z``, as Ollama writes ``created_at``."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def local_rfc3339(timestamp: float) -> str:
    """Local time with its offset, as Ollama writes ``modified_at`` and ``expires_at``."""
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="microseconds")


#: Why an answer ended: a stop (the end token or a stop string), its length, or a load or unload request.
DoneReason = Literal["stop", "length", "load", "unload"]


# ---------------------------------------------------------------------------------------------------------------
# Response bodies


class TopLogprob(Reply):
    """One of the likeliest tokens at a place in the answer."""

    token: str = Field(description="the token's text")
    logprob: float = Field(description="its natural-log probability")
    bytes: list[int] = Field(description="its text's UTF-8 bytes (a token may hold part of a character)")


class LogprobEntry(TopLogprob):
    """A token of the answer, how likely it was, and its likeliest rivals (Ollama's and OpenAI's shape)."""

    top_logprobs: list[TopLogprob] = Field(description="the likeliest tokens at this place, best first")


def logprob_entries(logprobs: Any) -> list[LogprobEntry]:
    """The engine's per-token log-probabilities on the wire."""
    return [LogprobEntry(token=item.token, logprob=item.logprob, bytes=list(item.token.encode("utf-8")),
                         top_logprobs=[TopLogprob(token=token, logprob=value, bytes=list(token.encode("utf-8")))
                                       for token, value in item.top]) for item in logprobs]


class ReplyFunction(Reply):
    index: int = Field(description="the call's place among the answer's calls")
    name: str = Field(description="the tool called")
    arguments: dict[str, Any] = Field(description="its arguments, as a JSON object")


class ReplyToolCall(Reply):
    function: ReplyFunction = Field(description="the function called")


def wire_tool_calls(calls: tuple[ToolCall, ...]) -> list[ReplyToolCall]:
    """Ollama's ``message.tool_calls``: arguments as a JSON object, an index per call."""
    return [ReplyToolCall(function=ReplyFunction(index=index, name=call.name, arguments=call.arguments))
            for index, call in enumerate(calls)]


class ReplyMessage(Reply):
    """The assistant's message, whole or a piece of it."""

    role: Literal["assistant"] = Field("assistant", description="always the assistant")
    content: str = Field(description="its text (streamed: this piece of it)")
    thinking: str | None = omitted("what a thinking model thought first (streamed: this piece of it)")
    tool_calls: list[ReplyToolCall] | None = omitted("the calls it made (streamed: in a chunk of their own)")


def _metrics() -> dict[str, Any]:
    """The statistics of an answer's last object, in Ollama's order (its ``Metrics``), for ``create_model``."""
    return {
        "done_reason": (DoneReason | None, omitted("why the answer ended")),
        "total_duration": (int | None, omitted("nanoseconds from the request to its end, loading included")),
        "load_duration": (int | None, omitted("nanoseconds spent loading the model")),
        "prompt_eval_count": (int | None, omitted("the prompt's tokens")),
        "prompt_eval_cached_count": (int | None, omitted("of those, the ones taken from an earlier turn's cache")),
        "prompt_eval_duration": (int | None, omitted("nanoseconds reading the prompt, to the first new token")),
        "eval_count": (int | None, omitted("tokens generated")),
        "eval_duration": (int | None, omitted("nanoseconds generating them")),
        "logprobs": (list[LogprobEntry] | None, omitted("each token's log-probability, when asked for (streamed: "
                                                        "all of them, in the last object)")),
    }


def _head() -> dict[str, Any]:
    return {"model": (str, Field(description="the model asked for, with its tag")),
            "created_at": (str, Field(description="when this object was made (RFC 3339, UTC)"))}

ChatResponse = create_model(
    "ChatResponse", __base__=Reply, __doc__="``/api/chat``'s answer: each streamed piece, and the last object "
                                            "(or the whole answer) with its statistics.",
    **_head(), message=(ReplyMessage, Field(description="the assistant's message, or this piece of it")),
    done=(bool, Field(description="whether this is the last object")), **_metrics())

GenerateChunk = create_model(
    "GenerateChunk", __base__=Reply, __doc__="A streamed piece of ``/api/generate``'s answer.",
    **_head(), response=(str, Field(description="this piece of the answer")),
    thinking=(str | None, omitted("this piece of a thinking model's thinking")),
    done=(bool, Field(description="false: more follows")))

GenerateResponse = create_model(
    "GenerateResponse", __base__=Reply, __doc__="``/api/generate``'s last object, or its whole answer.",
    **_head(), response=(str, Field(description="the whole answer (streamed: empty)")),
    done=(bool, Field(description="true")), **_metrics(),
    thinking=(str | None, omitted("what a thinking model thought first (not streamed)")),
    context=(list[int] | None, omitted("the exchange's tokens, to continue it with a later request's context")))


class LoadResponse(Reply):
    """What an empty prompt gets: the model is loaded (or, with ``keep_alive: 0``, unloaded)."""

    model: str = Field(description="the model, with its tag")
    created_at: str = Field(description="when (RFC 3339, UTC)")
    done: bool = Field(True, description="true")
    done_reason: Literal["load", "unload"] = Field(description="what was done")
    message: ReplyMessage | None = omitted("an empty assistant message (``/api/chat``)")
    response: str | None = omitted("an empty answer (``/api/generate``)")


class EmbedResponse(Reply):
    """``/api/embed``: one unit-length vector per input."""

    model: str = Field(description="the model, with its tag")
    embeddings: list[list[float]] = Field(description="the vectors, in the inputs' order")
    total_duration: int = Field(description="nanoseconds from the request to its end")
    load_duration: int = Field(description="nanoseconds spent loading the model")
    prompt_eval_count: int = Field(description="the inputs' tokens")


class EmbeddingResponse(Reply):
    """``/api/embeddings`` (the older route): one raw vector."""

    embedding: list[float] = Field(description="the prompt's vector, not normalized")


#: The version of Ollama's API whose shapes the server speaks (clients such as Codex refuse an older Ollama).
OLLAMA_API_VERSION = "0.14.0"


class VersionResponse(Reply):
    version: str = Field(description="the version of Ollama's API the server speaks")
    hllama_version: str = Field(description="hllama's own version")


class ModelDetails(Reply):
    """What kind of model it is, read from its files."""

    parent_model: str = Field(description="always empty")
    format: str = Field(description="safetensors or gguf")
    family: str = Field(description="the architecture (config.json's model_type)")
    families: list[str] | None = Field(description="the same, as a list (null when unknown)")
    parameter_size: str = Field(description="its size in parameters, such as 135M")
    quantization_level: str = Field(description="a GGUF file's level, else the precision it loads at")


class ListedModel(Reply):
    """A row of ``/api/tags``: an alias, or a model in the Hub cache."""

    name: str = Field(description="the name, with its tag")
    model: str = Field(description="the same")
    modified_at: str = Field(description="when its modelfile or snapshot last changed (RFC 3339, local)")
    size: int = Field(description="its files' bytes")
    digest: str = Field(description="a hash of its modelfile or snapshot")
    details: ModelDetails = Field(description="what kind of model it is")


class ListResponse(Reply):
    models: list[ListedModel] = Field(description="every alias and cached model")


class LoadingProgress(Reply):
    seconds: float = Field(description="how long it has been loading")
    status: str = Field(description="the loader's latest word")


class RunningModel(Reply):
    """A row of ``/api/ps``: a model loaded, or on its way in."""

    name: str = Field(description="the name, with its tag")
    model: str = Field(description="the same")
    size: int = Field(description="the bytes it holds now (measured), or an engine elsewhere's reserve")
    digest: str = Field(description="as in /api/tags")
    details: ModelDetails = Field(description="what kind of model it is")
    expires_at: str = Field(description="when it unloads (RFC 3339, local)")
    size_vram: int = Field(description="the bytes of it on a GPU")
    size_reserved: int | None = omitted("what it counts against the memory budget")
    context_length: int = Field(description="the context it runs with: the latest request's, within its own")
    requests_running: int | None = omitted("requests it answers now")
    requests_waiting: int | None = omitted("requests waiting for it")
    loading: LoadingProgress | None = omitted("how far a model on its way in got")


class ProcessResponse(Reply):
    models: list[RunningModel] = Field(description="the models loaded, longest to live first, then those loading")


class ShowResponse(Reply):
    """``/api/show``: an alias's modelfile, settings, template and what the model can do."""

    license: str = Field(description="the modelfile's license")
    modelfile: str = Field(description="the alias as a modelfile in Ollama's syntax")
    parameters: str = Field(description="the settings it sets, one per line")
    template: str = Field(description="its chat template")
    system: str = Field(description="its system prompt")
    details: ModelDetails = Field(description="what kind of model it is")
    messages: list[Message] = Field(description="its seed conversation")
    model_info: dict[str, Any] = Field(description="the model's configuration, under Ollama's key names")
    capabilities: list[str] = Field(description="completion, tools, thinking, insert, vision, embedding")
    modified_at: str = Field(description="when its modelfile last changed (RFC 3339, local)")
    error: str | None = omitted("why the modelfile is broken (this is its last good version)")


class ProgressResponse(Reply):
    """A line of ``/api/pull`` or ``/api/create``."""

    status: str = Field(description="what is happening")
    digest: str | None = omitted("the file being downloaded")
    total: int | None = omitted("its bytes")
    completed: int | None = omitted("its bytes downloaded so far")
