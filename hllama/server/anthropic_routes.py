"""Anthropic's Messages API (``POST /v1/messages``, ``/v1/messages/count_tokens``) over the same service.

Tools written for Anthropic's API (the ``anthropic`` SDKs, Claude Code with ``ANTHROPIC_BASE_URL``) run on local
models: the conversation's blocks become the engine's messages, ``tools`` its function tools (their calls held
to ``input_schema`` as on the other routes), and the answer comes back as thinking, text and tool_use blocks,
whole or as Anthropic's typed events.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from hllama.backends import Prompted
from hllama.conversation import ChatMessage as EngineMessage
from hllama.conversation import Message, Thought, ToolCall
from hllama.errors import InvalidOption
from hllama.images import from_base64
from hllama.runtime.service import Result, Service
from hllama.server.anthropic_types import (
    ContentBlock,
    ContentBlockDelta,
    ContentBlockStart,
    ContentBlockStop,
    CountTokensRequest,
    ErrorBody,
    ErrorResponse,
    InputJsonDelta,
    InputMessage,
    MessageDelta,
    MessageDeltaBody,
    MessageResponse,
    MessagesRequest,
    MessageStart,
    MessageStop,
    OutputBlock,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    TokenCount,
    Tool,
    ToolChoice,
    ToolUseBlock,
    Usage,
)
from hllama.server.body import json_body, read_body, replies
from hllama.server.streaming import Encoder, resolve_request, respond

router = APIRouter(prefix="/v1")
log = logging.getLogger("hllama.server")

#: Anthropic's tool_choice types as the engine's.
_TOOL_CHOICE = {"auto": "auto", "any": "required", "none": "none"}


@router.post("/messages", openapi_extra=json_body(MessagesRequest),
             responses=replies(MessageResponse, streamed="text/event-stream"))
async def messages(request: Request) -> Response:
    body: MessagesRequest = await read_body(request, MessagesRequest)
    if not body.messages:
        raise InvalidOption("messages: at least one message is required")
    service: Service = request.app.state.service
    resolved = resolve_request(service, body.model, body.parameters())
    choice = body.tool_choice or ToolChoice()
    tool_choice = (choice.name or "") if choice.type == "tool" else _TOOL_CHOICE[choice.type]
    events = service.chat(resolved, _history(body.system, body.messages), structure=body.schema,
                          tools=_tools(body.tools), tool_choice=tool_choice, think=body.think(),
                          think_if_able=True)  # Anthropic's API: a model that cannot think ignores the request
    return await respond(events, _Events("msg_" + secrets.token_hex(12), body), stream=body.stream,
                         resolved=resolved)


class _Events(Encoder):
    """Anthropic's events: message_start, then each block's start, deltas and stop, then message_delta and
    message_stop (an error after the stream began is an ``error`` event)."""

    def __init__(self, ident: str, body: MessagesRequest) -> None:
        self.ident, self.body = ident, body
        self.index, self.open_kind = -1, ""

    def start(self, prompted: Prompted | None) -> Iterable[bytes]:
        """message_start, with the prompt's tokens as Anthropic counts them there."""
        tokens = prompted.prompt_tokens if prompted is not None else 0
        start = MessageResponse(id=self.ident, model=self.body.model, content=[], stop_reason=None,
                                usage=Usage(input_tokens=tokens, output_tokens=0))
        yield _event(MessageStart(message=start))

    def piece(self, item: str | Thought) -> Iterable[bytes]:
        kind = "thinking" if isinstance(item, Thought) else "text"
        if kind != self.open_kind:
            if self.open_kind:
                yield _event(ContentBlockStop(index=self.index))
            self.index, self.open_kind = self.index + 1, kind
            empty = ThinkingBlock(thinking="") if kind == "thinking" else TextBlock(text="")
            yield _event(ContentBlockStart(index=self.index, content_block=empty))
        delta = ThinkingDelta(thinking=item.text) if isinstance(item, Thought) else TextDelta(text=item)
        yield _event(ContentBlockDelta(index=self.index, delta=delta))

    def end(self, result: Result) -> Iterable[bytes]:
        body = self.body
        if self.open_kind:
            yield _event(ContentBlockStop(index=self.index))
        for block in _tool_uses(result):
            self.index += 1
            yield _event(ContentBlockStart(index=self.index, content_block=block.model_copy(update={"input": {}})))
            yield _event(ContentBlockDelta(index=self.index, delta=InputJsonDelta(
                partial_json=json.dumps(block.input, ensure_ascii=False))))
            yield _event(ContentBlockStop(index=self.index))
        yield _event(MessageDelta(delta=MessageDeltaBody(stop_reason=_stop_reason(result, body),
                                                         stop_sequence=_stop_sequence(result, body)),
                                  usage=_usage(result)))
        yield _event(MessageStop())

    def error(self, message: str) -> bytes:
        return _event(ErrorResponse(error=ErrorBody(type="api_error", message=message)), name="error")

    def whole(self, text: str, result: Result) -> dict[str, Any]:
        content: list[OutputBlock] = [ThinkingBlock(thinking=result.thinking)] if result.thinking else []
        if text:
            content.append(TextBlock(text=text))
        content += _tool_uses(result)
        body = self.body
        reply = MessageResponse(id=self.ident, model=body.model, content=content,
                                stop_reason=_stop_reason(result, body), stop_sequence=_stop_sequence(result, body),
                                usage=_usage(result))
        return reply.model_dump()


@router.post("/messages/count_tokens", openapi_extra=json_body(CountTokensRequest), responses=replies(TokenCount))
async def count_tokens(request: Request) -> dict[str, Any]:
    body: CountTokensRequest = await read_body(request, CountTokensRequest)
    service: Service = request.app.state.service
    resolved = resolve_request(service, body.model, {})
    count = await service.count_tokens(resolved, _history(body.system, body.messages), tools=_tools(body.tools))
    return TokenCount(input_tokens=count).model_dump()


def _history(system: str | list[ContentBlock] | None, messages: list[InputMessage]) -> list[Message]:
    """Anthropic's conversation as the engine's: a tool_result block becomes a tool message naming its tool."""
    history: list[Message] = []
    if text := _text(system if isinstance(system, list) else [ContentBlock(type="text", text=system or "")]):
        history.append(EngineMessage(role="system", content=text))
    tool_names: dict[str, str] = {}
    for number, message in enumerate(messages):
        blocks = message.blocks
        if kinds := {block.type for block in blocks} - {"text", "image", "tool_use", "tool_result", "thinking",
                                                         "redacted_thinking"}:
            raise InvalidOption(f"messages: {', '.join(sorted(kinds))} blocks are not supported")
        if message.role == "system":  # Claude Code's mid-conversation system beta: a system turn where it stands
            history.append(EngineMessage(role="system", content=_text(blocks)))
            continue
        if message.role == "assistant":
            calls = [ToolCall(name=block.name or "", arguments=block.input or {})
                     for block in blocks if block.type == "tool_use"]
            tool_names |= {block.id: block.name for block in blocks if block.type == "tool_use" and block.id
                           and block.name}
            thinking = "".join(block.thinking or "" for block in blocks if block.type == "thinking")
            history.append(EngineMessage(role="assistant", content=_text(blocks), tool_calls=calls or None,
                                         thinking=thinking or None))
            continue
        results = [block for block in blocks if block.type == "tool_result"]
        history += [EngineMessage(role="tool", content=block.plain_text,
                                  tool_name=tool_names.get(block.tool_use_id or "")) for block in results]
        images = [_image(block, f"messages[{number}].content[{index}]") for index, block in enumerate(blocks)
                  if block.type == "image"]
        if (text := _text(blocks)) or images or not results:
            history.append(EngineMessage(role="user", content=text, images=images or None))
    return history


def _image(block: ContentBlock, where: str) -> bytes:
    """An image block's image, checked; only base64 sources (remote images are not fetched)."""
    source = block.source
    if source is None or source.type != "base64" or not source.data:
        raise InvalidOption(f"{where}: images come as base64 sources (remote images are not fetched)")
    if not (source.media_type or "").startswith("image/"):
        raise InvalidOption(f"{where}: media_type {str(source.media_type)[:50]!r} is not an image type")
    return from_base64(source.data, where=where)


def _text(blocks: list[ContentBlock]) -> str:
    return "".join(block.text or "" for block in blocks if block.type == "text")


def _tools(tools: list[Tool] | None) -> list[dict[str, Any]] | None:
    """Anthropic's tools as the function tools chat templates take."""
    if not tools:
        return None
    return [{"type": "function", "function": {"name": tool.name, "description": tool.description or "",
                                              "parameters": tool.input_schema}} for tool in tools]


def _tool_uses(result: Result) -> list[ToolUseBlock]:
    return [ToolUseBlock(id="toolu_" + secrets.token_hex(12), name=call.name, input=call.arguments)
            for call in result.tool_calls]


def _stop_reason(result: Result, body: MessagesRequest) -> Any:
    if result.tool_calls:
        return "tool_use"
    if _stop_sequence(result, body) is not None:
        return "stop_sequence"
    return "max_tokens" if result.finished.stats.done_reason == "length" else "end_turn"


def _stop_sequence(result: Result, body: MessagesRequest) -> str | None:
    """The request's stop sequence that ended the answer (not one the chat format adds of its own)."""
    matched = result.finished.stop_sequence
    return matched if matched is not None and matched in (body.stop_sequences or []) else None


def _usage(result: Result) -> Usage:
    stats = result.finished.stats
    return Usage(input_tokens=stats.evaluated_tokens, output_tokens=stats.generated_tokens,
                 cache_read_input_tokens=stats.cached_tokens)


def _event(event: BaseModel, *, name: str | None = None) -> bytes:
    document = event.model_dump()
    return (f"event: {name or document['type']}\ndata: ".encode()
            + json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n")
