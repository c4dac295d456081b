"""Ollama's generation routes: ``/api/chat`` and ``/api/generate``, streamed as NDJSON or whole."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from hllama.aliases.resolve import Resolved
from hllama.backends import Completion
from hllama.conversation import ChatMessage, Thought
from hllama.engine import normalized
from hllama.errors import InvalidOption
from hllama.runtime.service import Result, Service
from hllama.server.body import Reply, json_body, read_body, replies, reply
from hllama.server.disconnect import watched
from hllama.server.ollama_types import (
    ChatRequest,
    ChatResponse,
    EmbeddingResponse,
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    GenerateChunk,
    GenerateRequest,
    GenerateResponse,
    LoadResponse,
    ReplyMessage,
    decoded_images,
    logprob_entries,
    messages_from,
    now_rfc3339,
    overrides,
    wire_tool_calls,
)
from hllama.server.streaming import Encoder, resolve_request, respond
from hllama.server.views import wire_name

router = APIRouter()
log = logging.getLogger("hllama.server")

NDJSON = "application/x-ndjson"


@router.post("/api/chat", openapi_extra=json_body(ChatRequest), responses=replies(ChatResponse, streamed=NDJSON))
async def chat(request: Request) -> Response:
    body: ChatRequest = await read_body(request, ChatRequest)
    service: Service = request.app.state.service
    api, schema = overrides(body)
    resolved = resolve_request(service, body.model, api)
    name = wire_name(body.model)
    if not body.messages:
        return await _load_or_unload(service, resolved, name, unload=api.parameters.keep_alive == 0, chat=True)
    events = service.chat(resolved, messages_from(body.messages), structure=schema, tools=body.tools,
                          think=body.think, logprobs=body.logprob_alternatives, truncate=body.truncate,
                          shift=body.shift)
    return await respond(events, _ChatLines(name, body), stream=body.stream, resolved=resolved)


@router.post("/api/generate", openapi_extra=json_body(GenerateRequest),
             responses=replies(GenerateResponse, streamed=NDJSON))
async def generate(request: Request) -> Response:
    body: GenerateRequest = await read_body(request, GenerateRequest)
    service: Service = request.app.state.service
    if body.raw and (body.template or body.system or body.context):
        raise InvalidOption("raw mode does not support template, system, or context")
    if body.images and (body.raw or body.suffix or body.context):
        raise InvalidOption("images go with a chat prompt, not with raw, suffix or context")
    api, schema = overrides(body, system=body.system, template=body.template)
    resolved = resolve_request(service, body.model, api)
    name = wire_name(body.model)
    if not body.prompt:
        return await _load_or_unload(service, resolved, name, unload=api.parameters.keep_alive == 0, chat=False)
    logprobs = body.logprob_alternatives
    if body.raw or body.suffix:
        events = service.complete(resolved, Completion(body.prompt, suffix=body.suffix or None, logprobs=logprobs))
    elif body.context:  # the tokens of an earlier exchange, followed by the new turn
        events = service.complete(resolved, Completion(body.prompt, context=body.context, structure=schema,
                                                       logprobs=logprobs))
    else:
        ask = ChatMessage(role="user", content=body.prompt, images=decoded_images(body.images, where="images"))
        events = service.chat(resolved, [ask], structure=schema, think=body.think, logprobs=logprobs,
                              truncate=body.truncate, shift=body.shift)

    return await respond(events, _GenerateLines(name, body), stream=body.stream, resolved=resolved)


@router.post("/api/embed", openapi_extra=json_body(EmbedRequest), responses=replies(EmbedResponse))
async def embed(request: Request) -> Response:
    body: EmbedRequest = await read_body(request, EmbedRequest)
    service: Service = request.app.state.service
    api, _ = overrides(body)
    resolved = resolve_request(service, body.model, api)
    async with watched(request) as gone:
        result = await service.embed(resolved, body.texts, truncate=body.truncate, cancel=gone)
    return reply(EmbedResponse(
        model=wire_name(body.model),
        embeddings=[normalized(vector, body.dimensions) for vector in result.embeddings.vectors],
        total_duration=result.total_ns, load_duration=result.load_ns,
        prompt_eval_count=result.embeddings.prompt_tokens))


@router.post("/api/embeddings", openapi_extra=json_body(EmbedRequest), responses=replies(EmbeddingResponse))
async def embeddings(request: Request) -> Response:
    """The older route: one ``prompt``, one vector, not normalized."""
    body: EmbedRequest = await read_body(request, EmbedRequest)
    service: Service = request.app.state.service
    api, _ = overrides(body)
    result = await service.embed(resolve_request(service, body.model, api), body.texts[:1])
    return reply(EmbeddingResponse(embedding=result.embeddings.vectors[0] if result.embeddings.vectors else []))


async def _load_or_unload(service: Service, resolved: Resolved, name: str, *, unload: bool, chat: bool) -> Response:
    """An empty prompt loads the model; with ``keep_alive: 0`` it unloads it."""
    if unload:
        runner = service.scheduler.find(resolved)
        if runner is not None and runner.idle:
            await service.scheduler.unload(runner)
    else:
        await service.scheduler.load(resolved)
    return reply(LoadResponse(model=name, created_at=now_rfc3339(), done_reason="unload" if unload else "load",
                              message=ReplyMessage(content="") if chat else None, response=None if chat else ""))


def _metrics(body: ChatRequest | GenerateRequest, result: Result) -> dict[str, Any]:
    """The last object's statistics (and log-probabilities, when asked for)."""
    stats = result.finished.stats
    logprobs = logprob_entries(result.finished.logprobs) if body.logprob_alternatives is not None else None
    return {"done_reason": stats.done_reason if stats.done_reason != "cancel" else "stop",
            "total_duration": result.total_ns, "load_duration": result.load_ns,
            "prompt_eval_count": stats.prompt_tokens, "prompt_eval_cached_count": stats.cached_tokens,
            "prompt_eval_duration": stats.prompt_eval_ns,
            "eval_count": stats.generated_tokens, "eval_duration": stats.eval_ns, "logprobs": logprobs}


class _ChatLines(Encoder):
    """``/api/chat`` as NDJSON: one object per piece, the tool calls in one of their own, then the statistics."""

    media_type = NDJSON

    def __init__(self, name: str, body: ChatRequest) -> None:
        self.name, self.body = name, body

    def line(self, message: ReplyMessage, **last: Any) -> bytes:
        return _line(ChatResponse(model=self.name, created_at=now_rfc3339(), message=message, done=bool(last),
                                  **last))

    def piece(self, item: str | Thought) -> Iterable[bytes]:
        message = ReplyMessage(content="", thinking=item.text) if isinstance(item, Thought) \
            else ReplyMessage(content=item)
        return (self.line(message),)

    def end(self, result: Result) -> Iterable[bytes]:
        if result.tool_calls:  # while streaming, the calls come in a chunk of their own, as Ollama's do
            yield self.line(ReplyMessage(content="", tool_calls=wire_tool_calls(result.tool_calls)))
        yield self.line(ReplyMessage(content=""), **_metrics(self.body, result))

    def error(self, message: str) -> bytes:
        return _line(ErrorResponse(error=message))

    def whole(self, text: str, result: Result) -> dict[str, Any]:
        message = ReplyMessage(content=text, thinking=result.thinking or None,
                               tool_calls=wire_tool_calls(result.tool_calls) or None)
        return ChatResponse(model=self.name, created_at=now_rfc3339(), message=message, done=True,
                            **_metrics(self.body, result)).wire()


class _GenerateLines(Encoder):
    """``/api/generate`` as NDJSON: one object per piece, then the statistics (and the exchange's context)."""

    media_type = NDJSON

    def __init__(self, name: str, body: GenerateRequest) -> None:
        self.name, self.body = name, body

    def piece(self, item: str | Thought) -> Iterable[bytes]:
        said = {"response": "", "thinking": item.text} if isinstance(item, Thought) else {"response": item}
        return (_line(GenerateChunk(model=self.name, created_at=now_rfc3339(), **said, done=False)),)

    def end(self, result: Result) -> Iterable[bytes]:
        return (_line(self.last("", result)),)

    def error(self, message: str) -> bytes:
        return _line(ErrorResponse(error=message))

    def whole(self, text: str, result: Result) -> dict[str, Any]:
        return self.last(text, result).wire()

    def last(self, text: str, result: Result) -> Any:
        body = self.body
        context = None if body.raw or body.suffix else result.prompt_ids + result.finished.generated_ids
        return GenerateResponse(model=self.name, created_at=now_rfc3339(), response=text, done=True,
                                **_metrics(body, result), thinking=None if body.stream else result.thinking or None,
                                context=context)


def _line(document: Reply) -> bytes:
    return json.dumps(document.wire(), ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
