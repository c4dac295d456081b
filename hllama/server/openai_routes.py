"""OpenAI-compatible routes: translated into the same resolver and service as Ollama's, then framed as SSE."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from hllama.aliases.resolve import Overrides, Resolved
from hllama.backends import Completion
from hllama.conversation import ChatMessage as EngineMessage
from hllama.conversation import Message, Thought, ToolCall
from hllama.engine.embed import normalized
from hllama.errors import AliasNotFound, HllamaError, InvalidOption
from hllama.runtime.catalog import catalog
from hllama.runtime.service import Result, Service, collect, effective_settings
from hllama.server.body import json_body, read_body
from hllama.server.disconnect import watched
from hllama.server.views import logprob_entries, wire_name
from hllama.validation import first_problem

from .openai_types import ChatCompletionRequest, ChatMessage, CompletionRequest, EmbeddingRequest

router = APIRouter(prefix="/v1")
log = logging.getLogger("hllama.server")

EFFECTIVE_HEADER = "X-Hllama-Effective"


@router.post("/chat/completions", openapi_extra=json_body(ChatCompletionRequest))
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
    resolved = _resolve(service, body.model, parameters)
    try:
        think = body.think()
    except ValueError as exc:
        raise InvalidOption(str(exc)) from None
    events = service.chat(resolved, _history(body.messages), structure=schema, tools=body.tools,
                          tool_choice=body.tool_choice_name, think=think, logprobs=body.logprob_alternatives)
    return await _respond(events, body, resolved, kind="chat")


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


@router.post("/completions", openapi_extra=json_body(CompletionRequest))
async def completions(request: Request) -> Response:
    body: CompletionRequest = await read_body(request, CompletionRequest)
    prompt = body.prompt if isinstance(body.prompt, str) else "".join(body.prompt)
    if not prompt:
        raise InvalidOption("prompt must not be empty")
    service: Service = request.app.state.service
    resolved = _resolve(service, body.model, body.parameters())
    if body.suffix:  # an editor's completion between two pieces of code
        events = service.complete(resolved, Completion(prompt, suffix=body.suffix))
    else:  # as Ollama does, the prompt goes through the chat template (its ``raw`` is false here)
        events = service.chat(resolved, [Message(role="user", content=prompt)])
    return await _respond(events, body, resolved, kind="text")


@router.post("/embeddings", openapi_extra=json_body(EmbeddingRequest))
async def embeddings(request: Request) -> dict[str, Any]:
    body: EmbeddingRequest = await read_body(request, EmbeddingRequest)
    if body.encoding_format not in ("float", "base64"):
        raise InvalidOption(f"invalid encoding_format {body.encoding_format!r}: use float or base64")
    try:
        texts = body.texts
    except ValueError as exc:
        raise InvalidOption(str(exc)) from None
    service: Service = request.app.state.service
    resolved = _resolve(service, body.model, {})
    async with watched(request) as gone:
        result = await service.embed(resolved, texts, cancel=gone)
    data = []
    for index, vector in enumerate(result.embeddings.vectors):
        unit = normalized(vector, body.dimensions)
        encoded: Any = unit if body.encoding_format == "float" else \
            base64.b64encode(struct.pack(f"<{len(unit)}f", *unit)).decode()
        data.append({"object": "embedding", "embedding": encoded, "index": index})
    tokens = result.embeddings.prompt_tokens
    return {"object": "list", "data": data, "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    service: Service = request.app.state.service
    rows = await asyncio.to_thread(catalog, service.settings, service.registry, service.budget)
    return {"object": "list", "data": [_model_object(row.name) for row in rows]}


@router.get("/models/{model_id:path}")
async def model(model_id: str, request: Request) -> dict[str, Any]:
    service: Service = request.app.state.service
    rows = await asyncio.to_thread(catalog, service.settings, service.registry, service.budget)
    names = {wire_name(row.name).casefold(): row.name for row in rows}  # any case, as Ollama's names
    if (name := names.get(wire_name(model_id).casefold())) is None:
        raise AliasNotFound(model_id)
    return _model_object(name)


def _model_object(name: str) -> dict[str, Any]:
    owner = name.split("/", 1)[0] if "/" in name else "library"
    return {"id": wire_name(name), "object": "model", "created": int(time.time()), "owned_by": owner}


def _resolve(service: Service, model: str, parameters: dict[str, Any]) -> Resolved:
    if not model:
        raise InvalidOption("model is required")
    try:
        api = Overrides.model_validate({"parameters": parameters})
    except ValidationError as exc:
        name, problem = first_problem(exc, schema=Overrides)
        raise InvalidOption(f"{name or 'parameters'}: {problem}") from None
    return service.resolve(model, api)


async def _respond(events: AsyncIterator, body: Any, resolved: Resolved, *, kind: str) -> Response:
    ident = ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)
    created = int(time.time())
    base = {"id": ident, "object": "chat.completion" if kind == "chat" else "text_completion", "created": created,
            "model": body.model, "system_fingerprint": "fp_hllama"}
    headers = {EFFECTIVE_HEADER: effective_settings(resolved)}
    first = await anext(events)  # failures before the first token keep their HTTP status
    if not body.stream:
        pieces, item = await collect(first, events)
        text = "".join(pieces)
        choice: dict[str, Any] = {"index": 0, "finish_reason": _finish_reason(item)}
        if kind == "chat":
            choice["logprobs"] = _logprobs(body, item)
            choice["message"] = {"role": "assistant", "content": text}
            if item.thinking:
                choice["message"]["reasoning"] = item.thinking
            if item.tool_calls:
                choice["message"]["tool_calls"] = _tool_calls(item)
        else:
            choice.update(text=text, logprobs=None)
        return JSONResponse({**base, "choices": [choice], "usage": _usage(item)}, headers=headers)

    chunk_object = "chat.completion.chunk" if kind == "chat" else "text_completion"
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(delta: dict[str, Any] | str | None, finish: str | None = None, logprobs: Any = None) -> bytes:
        if kind == "chat":
            choice = {"index": 0, "delta": delta or {}, "finish_reason": finish, "logprobs": logprobs}
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
        return _event({**base, "object": chunk_object, "choices": [choice]})

    async def stream() -> AsyncIterator[bytes]:
        item = first
        started = False
        try:
            while not isinstance(item, Result):
                if kind == "chat":
                    delta = {"reasoning": item.text} if isinstance(item, Thought) else {"content": item}
                    if not started:
                        delta = {"role": "assistant", **delta}
                else:
                    delta = item
                started = True
                yield chunk(delta)
                item = await anext(events)
            if kind == "chat" and not started:
                yield chunk({"role": "assistant", "content": ""})
            if item.tool_calls:
                yield chunk({"tool_calls": _tool_calls(item)})
            yield chunk(None, _finish_reason(item), _logprobs(body, item) if kind == "chat" else None)
            if include_usage:
                yield _event({**base, "object": chunk_object, "choices": [], "usage": _usage(item)})
        except HllamaError as exc:
            yield _event({"error": {"message": str(exc), "type": "api_error", "param": None, "code": None}})
        except Exception as exc:  # noqa: BLE001 - the stream has begun: the error must be an event, not a status
            log.exception("unexpected error while streaming %s", resolved.name)
            yield _event({"error": {"message": f"{type(exc).__name__}: {exc}", "type": "api_error", "param": None,
                                    "code": None}})
        finally:
            await events.aclose()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


def _logprobs(body: Any, result: Result) -> dict[str, Any] | None:
    """OpenAI's ``choice.logprobs`` when asked for (streamed: all of them, on the last chunk)."""
    asked = getattr(body, "logprob_alternatives", None) is not None  # text completions have none
    return {"content": logprob_entries(result.finished.logprobs)} if asked else None


def _finish_reason(result: Result) -> str:
    if result.tool_calls:
        return "tool_calls"
    return "length" if result.finished.stats.done_reason == "length" else "stop"


def _tool_calls(result: Result) -> list[dict[str, Any]]:
    """OpenAI's shape: an id per call, arguments as a JSON text."""
    return [{"index": index, "id": "call_" + secrets.token_hex(12), "type": "function",
             "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}}
            for index, call in enumerate(result.tool_calls)]


def _usage(result: Result) -> dict[str, Any]:
    stats = result.finished.stats
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.generated_tokens,
            "total_tokens": stats.prompt_tokens + stats.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": stats.cached_tokens}}


def _event(document: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
