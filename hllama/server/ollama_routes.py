"""Ollama's generation routes: ``/api/chat`` and ``/api/generate``, streamed as NDJSON or whole."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from hllama.aliases.resolve import Resolved
from hllama.backends import Completion
from hllama.conversation import ChatMessage, Thought
from hllama.engine import normalized
from hllama.errors import InvalidOption
from hllama.runtime.service import Result, Service
from hllama.server.body import json_body, read_body
from hllama.server.disconnect import watched
from hllama.server.ollama_types import (
    ChatRequest,
    EmbedRequest,
    GenerateRequest,
    decoded_images,
    messages_from,
    now_rfc3339,
    overrides,
    wire_tool_calls,
)
from hllama.server.streaming import Encoder, resolve_request, respond
from hllama.server.views import logprob_entries, wire_name

router = APIRouter()
log = logging.getLogger("hllama.server")

NDJSON = "application/x-ndjson"


@router.post("/api/chat", openapi_extra=json_body(ChatRequest))
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


@router.post("/api/generate", openapi_extra=json_body(GenerateRequest))
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


@router.post("/api/embed", openapi_extra=json_body(EmbedRequest))
async def embed(request: Request) -> dict[str, Any]:
    body: EmbedRequest = await read_body(request, EmbedRequest)
    service: Service = request.app.state.service
    api, _ = overrides(body)
    resolved = resolve_request(service, body.model, api)
    async with watched(request) as gone:
        result = await service.embed(resolved, body.texts, truncate=body.truncate, cancel=gone)
    return {"model": wire_name(body.model),
            "embeddings": [normalized(vector, body.dimensions) for vector in result.embeddings.vectors],
            "total_duration": result.total_ns, "load_duration": result.load_ns,
            "prompt_eval_count": result.embeddings.prompt_tokens}


@router.post("/api/embeddings", openapi_extra=json_body(EmbedRequest))
async def embeddings(request: Request) -> dict[str, Any]:
    """The older route: one ``prompt``, one vector, not normalized."""
    body: EmbedRequest = await read_body(request, EmbedRequest)
    service: Service = request.app.state.service
    api, _ = overrides(body)
    result = await service.embed(resolve_request(service, body.model, api), body.texts[:1])
    return {"embedding": result.embeddings.vectors[0] if result.embeddings.vectors else []}


def _logprobs(body: Any, result: Result) -> dict[str, Any]:
    """All the answer's log-probabilities, in the last chunk (or the whole reply)."""
    return {"logprobs": logprob_entries(result.finished.logprobs)} if body.logprob_alternatives is not None else {}


async def _load_or_unload(service: Service, resolved: Resolved, name: str, *, unload: bool, chat: bool) -> Response:
    """An empty prompt loads the model; with ``keep_alive: 0`` it unloads it."""
    if unload:
        runner = service.scheduler.find(resolved)
        if runner is not None and runner.idle:
            await service.scheduler.unload(runner)
        reason = "unload"
    else:
        await service.scheduler.load(resolved)
        reason = "load"
    document: dict[str, Any] = {"model": name, "created_at": now_rfc3339(), "done": True, "done_reason": reason}
    if chat:
        document["message"] = {"role": "assistant", "content": ""}
    else:
        document["response"] = ""
    return JSONResponse(document)


def _stats(result: Result) -> dict[str, Any]:
    stats = result.finished.stats
    return {"done_reason": stats.done_reason if stats.done_reason != "cancel" else "stop",
            "total_duration": result.total_ns, "load_duration": result.load_ns,
            "prompt_eval_count": stats.prompt_tokens, "prompt_eval_cached_count": stats.cached_tokens,
            "prompt_eval_duration": stats.prompt_eval_ns,
            "eval_count": stats.generated_tokens, "eval_duration": stats.eval_ns}


class _Lines(Encoder):
    """Ollama's NDJSON: one object per piece, then the last one with the statistics."""

    media_type = NDJSON

    def __init__(self, name: str, body: ChatRequest | GenerateRequest) -> None:
        self.name, self.body = name, body

    def piece(self, item: str | Thought) -> Iterable[bytes]:
        return (_line({"model": self.name, "created_at": now_rfc3339(), **self.said(item), "done": False}),)

    def end(self, result: Result) -> Iterable[bytes]:
        return (_line(self.whole("", result)),)

    def error(self, message: str) -> bytes:
        return _line({"error": message})

    def said(self, item: str | Thought) -> dict[str, Any]:
        raise NotImplementedError

    def last(self, text: str, result: Result) -> dict[str, Any]:
        """The last object's start (its statistics follow)."""
        return {"model": self.name, "created_at": now_rfc3339()}

    def whole(self, text: str, result: Result) -> dict[str, Any]:
        return {**self.last(text, result), "done": True, **_stats(result), **_logprobs(self.body, result),
                **self.after(result)}

    def after(self, result: Result) -> dict[str, Any]:
        return {}


class _ChatLines(_Lines):
    def said(self, item: str | Thought) -> dict[str, Any]:
        message = {"role": "assistant", "content": "", "thinking": item.text} if isinstance(item, Thought) \
            else _message(item)
        return {"message": message}

    def last(self, text: str, result: Result) -> dict[str, Any]:
        whole = None if self.body.stream else result  # a stream sent thinking and calls as they came
        return {**super().last(text, result), "message": _message(text, whole)}

    def end(self, result: Result) -> Iterable[bytes]:
        """While streaming, the tool calls come in a chunk of their own before the last one, as Ollama's do."""
        if result.tool_calls:
            calls = {"role": "assistant", "content": "", "tool_calls": wire_tool_calls(result.tool_calls)}
            yield _line({"model": self.name, "created_at": now_rfc3339(), "message": calls, "done": False})
        yield from super().end(result)


class _GenerateLines(_Lines):
    body: GenerateRequest

    def said(self, item: str | Thought) -> dict[str, Any]:
        return {"response": "", "thinking": item.text} if isinstance(item, Thought) else {"response": item}

    def last(self, text: str, result: Result) -> dict[str, Any]:
        return {**super().last(text, result), "response": text}

    def after(self, result: Result) -> dict[str, Any]:
        document: dict[str, Any] = {}
        if result.thinking and not self.body.stream:
            document["thinking"] = result.thinking
        if not self.body.raw and not self.body.suffix:
            document["context"] = result.prompt_ids + result.finished.generated_ids
        return document


def _message(content: str, result: Result | None = None) -> dict[str, Any]:
    document: dict[str, Any] = {"role": "assistant", "content": content}
    if result is not None and result.thinking:
        document["thinking"] = result.thinking
    if result is not None and result.tool_calls:
        document["tool_calls"] = wire_tool_calls(result.tool_calls)
    return document


def _line(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
