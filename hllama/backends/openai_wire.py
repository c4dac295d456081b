"""What an alias's engine elsewhere is sent and sends back, in OpenAI's shape with vLLM's extras: the request
bodies built from a resolved alias (its settings below the request's), and the streamed chunks added up into one
answer."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from hllama.aliases.resolve import Resolved
from hllama.conversation import ANY_OBJECT, Pattern, ToolCall
from hllama.engine import Structure
from hllama.errors import InvalidOption

log = logging.getLogger("hllama.backends.upstream")


def chunk_of(data: str) -> dict[str, Any]:
    """One streamed chunk; a ValueError says what is wrong with it (an engine's mid-stream error included)."""
    try:
        chunk = json.loads(data)
    except ValueError:
        raise ValueError(f"a chunk that is not JSON: {data[:200]!r}") from None
    if not isinstance(chunk, dict):
        raise ValueError(f"a chunk that is not an object: {data[:200]!r}")
    if isinstance(chunk.get("error"), dict):  # vLLM reports a failure mid-stream this way
        raise ValueError(str(chunk["error"].get("message", chunk["error"]))[:500])
    return chunk


#: Settings an upstream engine takes per request, by hllama's name -> the engine's.
_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p", "seed": "seed",
             "repetition_penalty": "repetition_penalty", "presence_penalty": "presence_penalty",
             "frequency_penalty": "frequency_penalty", "stop": "stop"}


def request_body(resolved: Resolved, messages: list[dict[str, Any]], *, structure: Structure | None = None,
                 tools: list[dict[str, Any]] | None = None, tool_choice: str = "auto",
                 think: bool | str | None = None, logprobs: int | None = None, context: int = 0) -> dict[str, Any]:
    """A streamed chat completion for the engine (see :func:`_settings`)."""
    if any(message.get("images") for message in messages):
        raise InvalidOption(f"images: '{resolved.name}' is served by an engine in another process, to which "
                            "images are not passed on")
    body = _settings(resolved, context=context) | {"messages": _wire_messages(messages)}
    if logprobs is not None:
        body |= {"logprobs": True, "top_logprobs": logprobs}
    if isinstance(structure, Pattern):  # vLLM's structured_outputs
        body["structured_outputs"] = {structure.kind: json.loads(structure.text) if structure.kind == "choice"
                                      else structure.text}
    elif structure == ANY_OBJECT:
        body["response_format"] = {"type": "json_object"}
    elif isinstance(structure, dict):
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": structure}}
    if tools and tool_choice != "none":
        body["tools"] = tools
        body["tool_choice"] = tool_choice if tool_choice in ("auto", "required") else {
            "type": "function", "function": {"name": tool_choice}}
    if think is not None:
        body["chat_template_kwargs"] = {"enable_thinking": think is not False}
        if isinstance(think, str):
            body["reasoning_effort"] = think
    return body


def completion_body(resolved: Resolved, prompt: str, *, suffix: str | None = None, logprobs: int | None = None,
                    context: int = 0) -> dict[str, Any]:
    """A streamed raw completion (``/completions``): the prompt as given, no chat template (see :func:`_settings`)."""
    body = _settings(resolved, context=context) | {"prompt": prompt}
    if suffix:
        body["suffix"] = suffix
    if logprobs is not None:
        body["logprobs"] = logprobs  # the completions API counts alternatives here
    return body


def _settings(resolved: Resolved, *, context: int) -> dict[str, Any]:
    """What every request to the engine carries: the model, a stream with its usage, and the resolved settings
    by the engine's names. What an engine cannot take per request is refused by name rather than dropped:
    ``ctx`` is the engine's own, set where it starts (``context``, when hllama started it with that one), and so
    is its chat template."""
    parameters = resolved.parameters
    if parameters.ctx is not None and parameters.ctx != context:
        raise InvalidOption(f"num_ctx: '{resolved.name}' is served by an engine whose context is set where it "
                            f"starts (vLLM's --max-model-len{f', here {context}' if context else ''})")
    if resolved.template is not None:
        raise InvalidOption(f"template: '{resolved.name}' is served by an upstream engine, which renders "
                            "its own chat template")
    body: dict[str, Any] = {"model": resolved.model, "stream": True, "stream_options": {"include_usage": True}}
    body |= {wire: value for name, wire in _SAMPLING.items() if (value := getattr(parameters, name)) is not None}
    if parameters.max_new_tokens not in (None, -1):
        body["max_tokens"] = parameters.max_new_tokens
    return body


def _wire_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Template-ready messages as OpenAI's wire takes them: calls with ids and their arguments as JSON text, each
    tool result naming the call it answers."""
    wired: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (id, tool name) of calls not yet answered
    for index, message in enumerate(messages):
        out = {"role": message["role"], "content": message.get("content", "")}
        if message.get("tool_calls"):
            calls = [{"id": f"call_{index}_{number}", "type": "function",
                      "function": {"name": call["function"]["name"],
                                   "arguments": json.dumps(call["function"].get("arguments") or {})}}
                     for number, call in enumerate(message["tool_calls"])]
            out["tool_calls"] = calls
            pending = [(call["id"], call["function"]["name"]) for call in calls]
        if message["role"] == "tool":
            name = message.get("name")
            match = next((item for item in pending if item[1] == name), pending[0] if pending else None)
            if match is not None:
                pending.remove(match)
                out["tool_call_id"] = match[0]
            if name:
                out["name"] = name
        wired.append(out)
    return wired


@dataclass
class Answer:
    """What the chunks of one completion add up to."""

    text: str = ""
    thinking: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def __post_init__(self) -> None:
        self.stop_sequence: str | None = None
        self.calls: dict[int, dict[str, str]] = {}
        self.logprobs: list[dict[str, Any]] = []

    def add(self, chunk: dict[str, Any]) -> tuple[str, str]:
        """Take one chunk; returns its (content, thinking) pieces."""
        if isinstance(usage := chunk.get("usage"), dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
            details = usage.get("prompt_tokens_details")
            self.cached_tokens = int((details or {}).get("cached_tokens") or 0) if isinstance(details, dict) else 0
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return "", ""
        choice = choices[0]
        self.finish_reason = choice.get("finish_reason") or self.finish_reason
        if isinstance(choice.get("stop_reason"), str):  # vLLM names the stop string that ended the answer
            self.stop_sequence = choice["stop_reason"]
        if isinstance(logprobs := choice.get("logprobs"), dict):
            if isinstance(logprobs.get("content"), list):
                self.logprobs.extend(item for item in logprobs["content"] if isinstance(item, dict))
            elif isinstance(logprobs.get("tokens"), list):  # the completions API's columns
                tops = logprobs.get("top_logprobs") or []
                for index, token in enumerate(logprobs["tokens"]):
                    top = tops[index] if index < len(tops) and isinstance(tops[index], dict) else {}
                    values = logprobs.get("token_logprobs") or []
                    self.logprobs.append({"token": token, "logprob": values[index] if index < len(values) else 0.0,
                                          "top_logprobs": [{"token": key, "logprob": value}
                                                           for key, value in top.items()]})
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        for call in delta.get("tool_calls") or []:
            if isinstance(call, dict):
                slot = self.calls.setdefault(int(call.get("index") or 0), {"name": "", "arguments": ""})
                function = call.get("function") or {}
                slot["name"] += function.get("name") or ""
                slot["arguments"] += function.get("arguments") or ""
        content = delta.get("content") or choice.get("text") or ""  # a chat delta, or a raw completion's text
        thought = delta.get("reasoning_content") or delta.get("reasoning") or ""
        self.text += content
        self.thinking += thought
        return str(content), str(thought)

    def tool_calls(self) -> list[ToolCall]:
        calls = []
        for _, call in sorted(self.calls.items()):
            try:
                arguments = json.loads(call["arguments"] or "{}")
            except ValueError:
                log.warning("an upstream tool call to %s has arguments that are not JSON", call["name"])
                arguments = {}
            calls.append(ToolCall(name=call["name"], arguments=arguments if isinstance(arguments, dict) else {}))
        return calls
