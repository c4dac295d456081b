"""OpenAI's Responses API (``/v1/responses``) over the same service.

The input items become the engine's conversation; the answer comes back as output items (reasoning, the
message, function calls), whole or as typed events. A response is kept when stored (``store``, the default), so
a later request may continue it (``previous_response_id``: its conversation and answer come first) and
``GET``/``DELETE /v1/responses/{id}`` read or remove it; a continuation's prompt begins with the one it
continues, so the model's cache of that turn is reused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from hllama.backends import Prompted
from hllama.conversation import ANY_OBJECT, Message, Thought, ToolCall
from hllama.conversation import ChatMessage as EngineMessage
from hllama.errors import InvalidOption
from hllama.images import from_url
from hllama.runtime.service import Result, Service
from hllama.server.body import json_body, read_body, replies
from hllama.server.openai_types import EFFORT_TO_THINK
from hllama.server.responses_types import (
    DeletedResponse,
    FunctionCallItem,
    FunctionTool,
    IncompleteDetails,
    InputItem,
    InputTokens,
    InputTokensDetails,
    InputTokensRequest,
    MessageItem,
    OutputItem,
    OutputText,
    ReasoningItem,
    ReasoningText,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    StreamEvent,
)
from hllama.server.streaming import Encoder, resolve_request, respond

router = APIRouter(prefix="/v1")
log = logging.getLogger("hllama.server")


@router.post("/responses", openapi_extra=json_body(ResponsesRequest),
             responses=replies(ResponseObject, streamed="text/event-stream"))
async def responses(request: Request) -> Response:
    body: ResponsesRequest = await read_body(request, ResponsesRequest)
    service: Service = request.app.state.service
    resolved = resolve_request(service, body.model, body.parameters())
    items = await _items(service, body)
    choice = body.tool_choice if isinstance(body.tool_choice, str) else body.tool_choice.name
    events = service.chat(resolved, _history(body.instructions, items), structure=_structure(body),
                          tools=_tools(body), tool_choice=choice, think=_think(body))
    shell = ResponseObject(id="resp_" + secrets.token_hex(12), created_at=int(time.time()), status="in_progress",
                           model=body.model, output=[], instructions=body.instructions,
                           max_output_tokens=body.max_output_tokens, temperature=body.temperature,
                           top_p=body.top_p, tools=body.tools or [], tool_choice=body.tool_choice,
                           previous_response_id=body.previous_response_id, store=body.store)
    namespaces = {tool.name: namespace for namespace, tool in _functions(body) if namespace}
    kept = [item.model_dump(exclude_none=True) for item in items]
    keep = (lambda response: service.responses.put(response.model_dump(), kept)) if body.store else None
    return await respond(events, _Events(shell, namespaces, keep), stream=body.stream, resolved=resolved)


@router.get("/responses/{response_id}", responses=replies(ResponseObject))
async def stored(response_id: str, request: Request) -> Response:
    service: Service = request.app.state.service
    response, _ = await asyncio.to_thread(service.responses.get, response_id)
    return JSONResponse(response)


@router.delete("/responses/{response_id}", responses=replies(DeletedResponse))
async def delete_stored(response_id: str, request: Request) -> Response:
    service: Service = request.app.state.service
    await asyncio.to_thread(service.responses.delete, response_id)
    return JSONResponse(DeletedResponse(id=response_id).model_dump())


@router.post("/responses/input_tokens", openapi_extra=json_body(InputTokensRequest),
             responses=replies(InputTokens))
async def input_tokens(request: Request) -> Response:
    """How many tokens a request's input takes, as OpenAI's API counts it (the model is loaded to count)."""
    body: InputTokensRequest = await read_body(request, InputTokensRequest)
    service: Service = request.app.state.service
    resolved = resolve_request(service, body.model, {})
    history = _history(body.instructions, await _items(service, body))
    count = await service.count_tokens(resolved, history, tools=_tools(body))
    return JSONResponse(InputTokens(input_tokens=count).model_dump())


async def _items(service: Service, body: ResponsesRequest) -> list[InputItem]:
    """The conversation's items: those of the stored response it continues, if any, then its own input."""
    own = [InputItem(role="user", content=body.input)] if isinstance(body.input, str) else list(body.input)
    if not body.previous_response_id:
        return own
    earlier = await asyncio.to_thread(service.responses.conversation, body.previous_response_id)
    return [*(InputItem.model_validate(item) for item in earlier), *own]


class _Events(Encoder):
    """response.created, then each output item's added, deltas and done events, then response.completed."""

    def __init__(self, shell: ResponseObject, namespaces: dict[str, str],
                 keep: Callable[[ResponseObject], None] | None = None) -> None:
        self.shell, self.namespaces = shell, namespaces  # namespaces: a namespaced function's name -> namespace
        self.keep = keep  # told of the finished response, to store it
        self.number = 0
        self.index, self.open_kind, self.item_id, self.said, self.text = -1, "", "", "", ""

    def event(self, kind: str, **fields: Any) -> bytes:
        self.number += 1
        document = StreamEvent(type=kind, sequence_number=self.number - 1, **fields).model_dump()
        return f"event: {kind}\ndata: ".encode() + json.dumps(document, ensure_ascii=False).encode() + b"\n\n"

    def start(self, prompted: Prompted | None) -> Iterable[bytes]:
        yield self.event("response.created", response=self.shell.model_dump())
        yield self.event("response.in_progress", response=self.shell.model_dump())

    def piece(self, item: str | Thought) -> Iterable[bytes]:
        kind = "reasoning" if isinstance(item, Thought) else "message"
        if kind != self.open_kind:
            yield from self.close()
            self.index, self.open_kind, self.said = self.index + 1, kind, ""
            yield from self.open(kind)
        piece = item.text if isinstance(item, Thought) else item
        self.said += piece
        self.text += "" if isinstance(item, Thought) else piece
        name = "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
        yield self.event(name, item_id=self.item_id, output_index=self.index, content_index=0, delta=piece)

    def open(self, kind: str) -> Iterable[bytes]:
        """The added events of a new output item."""
        if kind == "reasoning":
            self.item_id = "rs_" + secrets.token_hex(12)
            added: OutputItem = ReasoningItem(id=self.item_id, content=[])
            yield self.event("response.output_item.added", output_index=self.index, item=added.model_dump())
            return
        self.item_id = "msg_" + secrets.token_hex(12)
        added = MessageItem(id=self.item_id, status="in_progress", content=[])
        yield self.event("response.output_item.added", output_index=self.index, item=added.model_dump())
        yield self.event("response.content_part.added", item_id=self.item_id, output_index=self.index,
                         content_index=0, part=OutputText(text="").model_dump())

    def close(self) -> Iterable[bytes]:
        """The done events of the item being written, if one is."""
        if not self.open_kind:
            return
        place = {"item_id": self.item_id, "output_index": self.index, "content_index": 0}
        if self.open_kind == "reasoning":
            done = ReasoningItem(id=self.item_id, content=[ReasoningText(text=self.said)])
            yield self.event("response.reasoning_text.done", **place, text=self.said)
            yield self.event("response.output_item.done", output_index=self.index, item=done.model_dump())
            return
        part = OutputText(text=self.said)
        done_message = MessageItem(id=self.item_id, status="completed", content=[part])
        yield self.event("response.output_text.done", **place, text=self.said)
        yield self.event("response.content_part.done", **place, part=part.model_dump())
        yield self.event("response.output_item.done", output_index=self.index, item=done_message.model_dump())

    def end(self, result: Result) -> Iterable[bytes]:
        yield from self.close()
        for call in _calls(result, self.namespaces):
            self.index += 1
            yield self.event("response.output_item.added", output_index=self.index,
                             item=call.model_copy(update={"arguments": "", "status": "in_progress"}).model_dump())
            yield self.event("response.function_call_arguments.delta", item_id=call.id, output_index=self.index,
                             delta=call.arguments)
            yield self.event("response.function_call_arguments.done", item_id=call.id, output_index=self.index,
                             arguments=call.arguments)
            yield self.event("response.output_item.done", output_index=self.index, item=call.model_dump())
        done_response = self.finished(result, self.text)
        yield self.event("response.completed" if done_response.status == "completed" else "response.incomplete",
                         response=done_response.model_dump())

    def error(self, message: str) -> bytes:
        return self.event("error", code=None, message=message, param=None)

    def whole(self, text: str, result: Result) -> dict[str, Any]:
        return self.finished(result, text).model_dump()

    def finished(self, result: Result, text: str) -> ResponseObject:
        """The whole response, stored where the request asked for it."""
        response = _finished(self.shell, result, text, self.namespaces)
        if self.keep is not None:
            self.keep(response)
        return response


def _finished(shell: ResponseObject, result: Result, text: str, namespaces: dict[str, str]) -> ResponseObject:
    """The whole response: reasoning, the message (when there is text), function calls, usage."""
    output: list[OutputItem] = []
    if result.thinking:
        output.append(ReasoningItem(id="rs_" + secrets.token_hex(12), content=[ReasoningText(text=result.thinking)]))
    cut = result.finished.stats.done_reason == "length"
    if text or not result.tool_calls:
        output.append(MessageItem(id="msg_" + secrets.token_hex(12), status="incomplete" if cut else "completed",
                                  content=[OutputText(text=text)]))
    output += _calls(result, namespaces)
    stats = result.finished.stats
    usage = ResponseUsage(input_tokens=stats.prompt_tokens, output_tokens=stats.generated_tokens,
                          total_tokens=stats.prompt_tokens + stats.generated_tokens,
                          input_tokens_details=InputTokensDetails(cached_tokens=stats.cached_tokens))
    return shell.model_copy(update={
        "status": "incomplete" if cut else "completed", "output": output, "usage": usage,
        "incomplete_details": IncompleteDetails(reason="max_output_tokens") if cut else None})


def _calls(result: Result, namespaces: dict[str, str]) -> list[FunctionCallItem]:
    """The answer's calls, each in the namespace its function was offered in (``namespaces``: name -> namespace)."""
    return [FunctionCallItem(id="fc_" + secrets.token_hex(12), call_id="call_" + secrets.token_hex(12),
                             name=call.name, namespace=namespaces.get(call.name),
                             arguments=json.dumps(call.arguments, ensure_ascii=False), status="completed")
            for call in result.tool_calls]


def _history(instructions: str | None, items: list[InputItem]) -> list[Message]:
    """The input items as the engine's conversation; a function call's output names its function."""
    history: list[Message] = [EngineMessage(role="system", content=instructions)] if instructions else []
    names: dict[str, str] = {}
    for number, item in enumerate(items):
        if item.type == "function_call":
            try:
                arguments = json.loads(item.arguments or "{}")
            except ValueError:
                arguments = None
            if not isinstance(arguments, dict):
                raise InvalidOption(f"function_call '{item.name}': arguments must be a JSON object")
            names[item.call_id or ""] = item.name or ""
            call = ToolCall(name=item.name or "", arguments=arguments)
            last = history[-1] if history else None
            if isinstance(last, EngineMessage) and last.role == "assistant" and last.tool_calls is not None:
                last.tool_calls.append(call)  # several calls of one turn
            else:
                history.append(EngineMessage(role="assistant", content="", tool_calls=[call]))
        elif item.type == "function_call_output":
            history.append(EngineMessage(role="tool", content=item.output_text,
                                         tool_name=names.get(item.call_id or "")))
        elif item.type == "message":
            parts = item.content if isinstance(item.content, list) else []
            images = [from_url(part.image_url or "", where=f"input[{number}].content[{index}]")
                      for index, part in enumerate(parts) if part.type == "input_image"]
            role = {"developer": "system"}.get(item.role or "user", item.role or "user")
            if role not in ("system", "user", "assistant"):
                raise InvalidOption(f"input items with role '{item.role}' are not supported")
            history.append(EngineMessage(role=role, content=item.text, images=images or None))  # type: ignore[arg-type]
        elif item.type != "reasoning":  # earlier reasoning is not shown to the model again
            raise InvalidOption(f"input items of type '{item.type}' are not supported")
    return history


def _tools(body: ResponsesRequest) -> list[dict[str, Any]] | None:
    """The functions offered, a namespace's among them (flattened: the model calls them by name); hosted tools
    (web search, file search, code interpreter, MCP...) cannot run here and are left out, with a log line."""
    functions = [tool for _, tool in _functions(body)]
    hosted = sorted({tool.type for tool in body.tools or [] if tool.type not in ("function", "namespace")})
    if hosted:
        log.info("tools: %s cannot run here and are left out", ", ".join(hosted))
    return [{"type": "function", "function": {"name": tool.name, "description": tool.description or "",
                                              "parameters": tool.parameters or {"type": "object"}}}
            for tool in functions] or None


def _functions(body: ResponsesRequest) -> list[tuple[str | None, FunctionTool]]:
    """Each function offered, with the namespace it was offered in (None: at the top)."""
    found: list[tuple[str | None, FunctionTool]] = []
    for tool in body.tools or []:
        if tool.type == "function":
            found.append((None, tool))
        elif tool.type == "namespace":
            described = [tool.description] if tool.description else []
            found += [(tool.name, inner.model_copy(update={"description": "\n\n".join(
                [*described, *([inner.description] if inner.description else [])])}))
                for inner in tool.tools or [] if inner.type == "function"]
    return found


def _structure(body: ResponsesRequest) -> dict[str, Any] | None:
    format_ = body.text.format if body.text else None
    if format_ is None or format_.type == "text":
        return None
    return ANY_OBJECT if format_.type == "json_object" else (format_.schema_ or {})


def _think(body: ResponsesRequest) -> bool | str | None:
    effort = body.reasoning.effort if body.reasoning else None
    if effort is None:
        return None
    if effort not in EFFORT_TO_THINK:
        raise InvalidOption(f"reasoning.effort: use one of {', '.join(EFFORT_TO_THINK)}")
    return EFFORT_TO_THINK[effort]
