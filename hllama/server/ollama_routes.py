"""Ollama's generation routes: ``/api/chat`` and ``/api/generate``, streamed as NDJSON or whole."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from hllama.aliases.resolve import Resolved
from hllama.backends import Completion
from hllama.conversation import ChatMessage, Thought
from hllama.engine.embed import normalized
from hllama.errors import HllamaError, InvalidOption
from hllama.runtime.service import Result, Service, collect, effective_settings
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
from hllama.server.views import logprob_entries, wire_name

router = APIRouter()
log = logging.getLogger("hllama.server")

NDJSON = "application/x-ndjson"
EFFECTIVE_HEADER = "X-Hllama-Effective"


@router.post("/api/chat", openapi_extra=json_body(ChatRequest))
async def chat(request: Request) -> Response:
    body: ChatRequest = await read_body(request, ChatRequest)
    service: Service = request.app.state.service
    api, schema = overrides(body)
    resolved = _resolve(service, body.model, api)
    name = wire_name(body.model)
    if not body.messages:
        return await _load_or_unload(service, resolved, name, unload=api.parameters.keep_alive == 0, chat=True)
    events = service.chat(resolved, messages_from(body.messages), structure=schema, tools=body.tools,
                          think=body.think, logprobs=body.logprob_alternatives, truncate=body.truncate,
                          shift=body.shift)

    def message(content: str, result: Result | None = None) -> dict[str, Any]:
        document: dict[str, Any] = {"role": "assistant", "content": content}
        if result is not None and result.thinking:
            document["thinking"] = result.thinking
        if result is not None and result.tool_calls:
            document["tool_calls"] = wire_tool_calls(result.tool_calls)
        return document

    def chunk(piece: str | Thought) -> dict[str, Any]:
        said = {"role": "assistant", "content": "", "thinking": piece.text} if isinstance(piece, Thought) \
            else message(piece)
        return {"model": name, "created_at": now_rfc3339(), "message": said, "done": False}

    def final(result: Result, text: str) -> dict[str, Any]:
        whole = None if body.stream else result  # a stream sent thinking and calls as they came
        return {"model": name, "created_at": now_rfc3339(), "message": message(text, whole), "done": True,
                **_stats(result), **_logprobs(body, result)}

    def calls(result: Result) -> dict[str, Any] | None:
        """While streaming, the tool calls come in a chunk of their own before the last one, as Ollama's do."""
        if not result.tool_calls:
            return None
        return {**chunk(""), "message": {"role": "assistant", "content": "",
                                         "tool_calls": wire_tool_calls(result.tool_calls)}}

    return await _respond(events, chunk, final, stream=body.stream, resolved=resolved, before_final=calls)


@router.post("/api/generate", openapi_extra=json_body(GenerateRequest))
async def generate(request: Request) -> Response:
    body: GenerateRequest = await read_body(request, GenerateRequest)
    service: Service = request.app.state.service
    if body.raw and (body.template or body.system or body.context):
        raise InvalidOption("raw mode does not support template, system, or context")
    if body.images and (body.raw or body.suffix or body.context):
        raise InvalidOption("images go with a chat prompt, not with raw, suffix or context")
    api, schema = overrides(body, system=body.system, template=body.template)
    resolved = _resolve(service, body.model, api)
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

    def chunk(piece: str | Thought) -> dict[str, Any]:
        said = {"response": "", "thinking": piece.text} if isinstance(piece, Thought) else {"response": piece}
        return {"model": name, "created_at": now_rfc3339(), **said, "done": False}

    def final(result: Result, text: str) -> dict[str, Any]:
        document = {"model": name, "created_at": now_rfc3339(), "response": text, "done": True, **_stats(result),
                    **_logprobs(body, result)}
        if result.thinking and not body.stream:
            document["thinking"] = result.thinking
        if not body.raw and not body.suffix:
            document["context"] = result.prompt_ids + result.finished.generated_ids
        return document

    return await _respond(events, chunk, final, stream=body.stream, resolved=resolved)


@router.post("/api/embed", openapi_extra=json_body(EmbedRequest))
async def embed(request: Request) -> dict[str, Any]:
    body: EmbedRequest = await read_body(request, EmbedRequest)
    service: Service = request.app.state.service
    api, _ = overrides(body)
    resolved = _resolve(service, body.model, api)
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
    result = await service.embed(_resolve(service, body.model, api), body.texts[:1])
    return {"embedding": result.embeddings.vectors[0] if result.embeddings.vectors else []}


def _logprobs(body: Any, result: Result) -> dict[str, Any]:
    """All the answer's log-probabilities, in the last chunk (or the whole reply)."""
    return {"logprobs": logprob_entries(result.finished.logprobs)} if body.logprob_alternatives is not None else {}


def _resolve(service: Service, model: str, api: Any) -> Resolved:
    if not model:
        raise InvalidOption("model is required")
    return service.resolve(model, api)


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


async def _respond(events: AsyncIterator, chunk: Any, final: Any, *, stream: bool, resolved: Resolved,
                   before_final: Any = None) -> Response:
    """Stream NDJSON, or collect one object. Errors before the first byte are HTTP errors; after, a last line.

    ``before_final(result)`` may give one more chunk to stream ahead of the last.
    """
    headers = {EFFECTIVE_HEADER: effective_settings(resolved)}
    first = await anext(events)  # loading, prompt building and the first token: failures here get a status
    if not stream:
        pieces, item = await collect(first, events)
        return JSONResponse(final(item, "".join(pieces)), headers=headers)

    async def lines() -> AsyncIterator[bytes]:
        item = first
        try:
            while True:
                if isinstance(item, Result):
                    if before_final and (extra := before_final(item)):
                        yield _line(extra)
                    yield _line(final(item, ""))
                    return
                yield _line(chunk(item))
                item = await anext(events)
        except HllamaError as exc:
            yield _line({"error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - the stream has begun: the error must be a line, not a status
            log.exception("unexpected error while streaming %s", resolved.name)
            yield _line({"error": f"{type(exc).__name__}: {exc}"})
        finally:
            await events.aclose()

    return StreamingResponse(lines(), media_type=NDJSON, headers=headers)


def _line(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
