"""OpenAI-compatible routes: translated into the same resolver and service as Ollama's, then framed as SSE."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import struct
import time
from collections.abc import Iterable
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response

from hllama.backends import Completion
from hllama.conversation import ChatMessage as EngineMessage
from hllama.conversation import Message, Thought, ToolCall
from hllama.engine import normalized
from hllama.errors import AliasNotFound, InvalidOption
from hllama.runtime.catalog import catalog
from hllama.runtime.service import Result, Service
from hllama.server.body import Reply, json_body, read_body, replies, reply
from hllama.server.disconnect import watched
from hllama.server.ollama_types import logprob_entries
from hllama.server.openai_types import (
    AssistantMessage,
    CachedTokens,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    ChunkChoice,
    CompletionRequest,
    Delta,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    ErrorDetail,
    ErrorResponse,
    FunctionCallReply,
    Logprobs,
    ModelList,
    ModelObject,
    TextChoice,
    TextChunkChoice,
    TextCompletion,
    TextCompletionChunk,
    ToolCallReply,
    Usage,
)
from hllama.server.streaming import Encoder, resolve_request, respond
from hllama.server.views import wire_name

router = APIRouter(prefix="/v1")
log = logging.getLogger("hllama.server")



@router.post("/chat/completions", openapi_extra=json_body(ChatCompletionRequest),
             responses=replies(ChatCompletion, streamed="text/event-stream"))
async def chat_completions(request: Request) -> Response:
    body: ChatCompletionRequest = await read_body(request, ChatCompletionRequest)
    if not body.messages:
        raise InvalidOption("messages must not be empty")
    schema = None
    parameters = body.parameters()
    if body.response_format is not None and body.response_format.type != "text":
        parameters["json_mode"] = True
        if body.response_format.type == "json_schema":
            schema = (body.response_format.json_schema or {}).get("schema") or {}
    if body.structured_outputs is not None:  # vLLM's way of asking, for the clients written for it
        schema = body.structured_outputs.structure()
    service: Service = request.app.state.service
    resolved = resolve_request(service, body.model, parameters)
    try:
        think = body.think()
    except ValueError as exc:
        raise InvalidOption(str(exc)) from None
    events = service.chat(resolved, _history(body.messages), structure=schema, tools=body.tools,
                          tool_choice=body.tool_choice_name, think=think, logprobs=body.logprob_alternatives)
    return await respond(events, _ChatEvents(body), stream=body.stream, resolved=resolved)


def _history(messages: list[ChatMessage]) -> list[Message]:
    """OpenAI's messages as the engine's; a tool result names its tool through the call it answers."""
    tool_names: dict[str, str] = {}
    history: list[Message] = []
    for number, message in enumerate(messages):
        role = message.role.lower().replace("developer", "system")
        if role not in ("system", "user", "assistant", "tool"):
            raise InvalidOption(f"messages with role '{message.role}' are not supported")
        calls = []
        for item in message.tool_calls or []:
            try:
                arguments = json.loads(item.function.arguments or "{}")
            except ValueError:
                arguments = None
            if not isinstance(arguments, dict):
                raise InvalidOption(f"tool call '{item.function.name}': arguments must be a JSON object")
            calls.append(ToolCall(name=item.function.name, arguments=arguments))
            tool_names[item.id] = item.function.name
        tool_name = message.name or tool_names.get(message.tool_call_id or "") if role == "tool" else None
        history.append(EngineMessage(role=role, content=message.text, tool_calls=calls or None,  # type: ignore[arg-type]
                                     tool_name=tool_name, images=message.images(f"messages[{number}]") or None))
    return history


@router.post("/completions", openapi_extra=json_body(CompletionRequest),
             responses=replies(TextCompletion, streamed="text/event-stream"))
async def completions(request: Request) -> Response:
    body: CompletionRequest = await read_body(request, CompletionRequest)
    prompt = body.prompt if isinstance(body.prompt, str) else "".join(body.prompt)
    if not prompt:
        raise InvalidOption("prompt must not be empty")
    service: Service = request.app.state.service
    resolved = resolve_request(service, body.model, body.parameters())
    if body.suffix:  # an editor's completion between two pieces of code
        events = service.complete(resolved, Completion(prompt, suffix=body.suffix))
    else:  # as Ollama does, the prompt goes through the chat template (its ``raw`` is false here)
        events = service.chat(resolved, [Message(role="user", content=prompt)])
    return await respond(events, _TextEvents(body), stream=body.stream, resolved=resolved)


@router.post("/embeddings", openapi_extra=json_body(EmbeddingRequest), responses=replies(EmbeddingList))
async def embeddings(request: Request) -> Response:
    body: EmbeddingRequest = await read_body(request, EmbeddingRequest)
    if body.encoding_format not in ("float", "base64"):
        raise InvalidOption(f"invalid encoding_format {body.encoding_format!r}: use float or base64")
    try:
        texts = body.texts
    except ValueError as exc:
        raise InvalidOption(str(exc)) from None
    service: Service = request.app.state.service
    resolved = resolve_request(service, body.model, {})
    async with watched(request) as gone:
        result = await service.embed(resolved, texts, cancel=gone)
    data = []
    for index, vector in enumerate(result.embeddings.vectors):
        unit = normalized(vector, body.dimensions)
        encoded: list[float] | str = unit if body.encoding_format == "float" else \
            base64.b64encode(struct.pack(f"<{len(unit)}f", *unit)).decode()
        data.append(Embedding(embedding=encoded, index=index))
    tokens = result.embeddings.prompt_tokens
    return reply(EmbeddingList(data=data, model=body.model,
                               usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)))


@router.get("/models", responses=replies(ModelList))
async def models(request: Request) -> Response:
    service: Service = request.app.state.service
    rows = await asyncio.to_thread(catalog, service.settings, service.registry, service.budget)
    return reply(ModelList(data=[_model_object(row.name) for row in rows]))


@router.get("/models/{model_id:path}", responses=replies(ModelObject))
async def model(model_id: str, request: Request) -> Response:
    service: Service = request.app.state.service
    rows = await asyncio.to_thread(catalog, service.settings, service.registry, service.budget)
    names = {wire_name(row.name).casefold(): row.name for row in rows}  # any case, as Ollama's names
    if (name := names.get(wire_name(model_id).casefold())) is None:
        raise AliasNotFound(model_id)
    return reply(_model_object(name))


def _model_object(name: str) -> ModelObject:
    owner = name.split("/", 1)[0] if "/" in name else "library"
    return ModelObject(id=wire_name(name), created=int(time.time()), owned_by=owner)


class _TextEvents(Encoder):
    """A text completion, whole or as server-sent chunks ending in ``data: [DONE]``."""

    closing = b"data: [DONE]\n\n"
    prefix = "cmpl-"

    def __init__(self, body: ChatCompletionRequest | CompletionRequest) -> None:
        self.body = body
        self.base = {"id": self.prefix + secrets.token_hex(12), "created": int(time.time()), "model": body.model}

    def end(self, result: Result) -> Iterable[bytes]:
        yield from self.last_chunks(result)
        if self.body.stream_options and self.body.stream_options.include_usage:
            yield self.usage_chunk(result)

    def error(self, message: str) -> bytes:
        return _event(ErrorResponse(error=ErrorDetail(message=message, type="api_error")))

    def piece(self, item: str | Thought) -> Iterable[bytes]:
        return (self.chunk(TextChunkChoice(index=0, text=str(item), finish_reason=None, logprobs=None)),)

    def chunk(self, choice: TextChunkChoice) -> bytes:
        return _event(TextCompletionChunk(**self.base, choices=[choice]))

    def last_chunks(self, result: Result) -> Iterable[bytes]:
        yield self.chunk(TextChunkChoice(index=0, text="", finish_reason=_finish_reason(result), logprobs=None))

    def usage_chunk(self, result: Result) -> bytes:
        return _event(TextCompletionChunk(**self.base, choices=[], usage=_usage(result)))

    def whole(self, text: str, result: Result) -> dict[str, Any]:
        choice = TextChoice(index=0, finish_reason=_finish_reason(result), text=text, logprobs=None)
        return TextCompletion(**self.base, choices=[choice], usage=_usage(result)).wire()


class _ChatEvents(_TextEvents):
    """A chat completion, whole or as server-sent chunks: the role first, then the pieces, the calls, the end."""

    prefix = "chatcmpl-"

    def __init__(self, body: ChatCompletionRequest) -> None:
        super().__init__(body)
        self.chat = body
        self.started = False

    def delta(self, delta: Delta, finish: str | None = None, logprobs: Logprobs | None = None) -> bytes:
        if not self.started:
            delta, self.started = delta.model_copy(update={"role": "assistant"}), True
        choice = ChunkChoice(index=0, delta=delta, finish_reason=finish, logprobs=logprobs)
        return _event(ChatCompletionChunk(**self.base, choices=[choice]))

    def piece(self, item: str | Thought) -> Iterable[bytes]:
        return (self.delta(Delta(reasoning=item.text) if isinstance(item, Thought) else Delta(content=item)),)

    def last_chunks(self, result: Result) -> Iterable[bytes]:
        if not self.started:
            yield self.delta(Delta(content=""))
        if result.tool_calls:
            yield self.delta(Delta(tool_calls=_tool_calls(result)))
        yield self.delta(Delta(), _finish_reason(result), _logprobs(self.chat, result))

    def usage_chunk(self, result: Result) -> bytes:
        return _event(ChatCompletionChunk(**self.base, choices=[], usage=_usage(result)))

    def whole(self, text: str, result: Result) -> dict[str, Any]:
        message = AssistantMessage(content=text, reasoning=result.thinking or None,
                                   tool_calls=_tool_calls(result) or None)
        choice = ChatChoice(index=0, finish_reason=_finish_reason(result), logprobs=_logprobs(self.chat, result),
                            message=message)
        return ChatCompletion(**self.base, choices=[choice], usage=_usage(result)).wire()


def _logprobs(body: ChatCompletionRequest, result: Result) -> Logprobs | None:
    """OpenAI's ``choice.logprobs`` when asked for (streamed: all of them, on the last chunk)."""
    asked = body.logprob_alternatives is not None
    return Logprobs(content=logprob_entries(result.finished.logprobs)) if asked else None


def _finish_reason(result: Result) -> Literal["stop", "length", "tool_calls"]:
    if result.tool_calls:
        return "tool_calls"
    return "length" if result.finished.stats.done_reason == "length" else "stop"


def _tool_calls(result: Result) -> list[ToolCallReply]:
    """OpenAI's shape: an id per call, arguments as a JSON text."""
    return [ToolCallReply(index=index, id="call_" + secrets.token_hex(12), function=FunctionCallReply(
        name=call.name, arguments=json.dumps(call.arguments, ensure_ascii=False)))
        for index, call in enumerate(result.tool_calls)]


def _usage(result: Result) -> Usage:
    stats = result.finished.stats
    return Usage(prompt_tokens=stats.prompt_tokens, completion_tokens=stats.generated_tokens,
                 total_tokens=stats.prompt_tokens + stats.generated_tokens,
                 prompt_tokens_details=CachedTokens(cached_tokens=stats.cached_tokens))


def _event(document: Reply) -> bytes:
    return b"data: " + json.dumps(document.wire(), ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
