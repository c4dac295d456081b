"""Aliases served by OpenAI-compatible engines already running (vLLM, SGLang, TGI, llama-server, another hllama).

An alias whose load section names ``upstream`` URLs is not loaded here: its requests go to one of those engines,
with the alias's settings below the request's, as every alias's are. To the scheduler an :class:`Upstream` is a
loaded model that takes no memory; several URLs are replicas, and each request goes to the one with the fewest
in flight. A replica that cannot be reached is skipped until a health check (``GET /models``) passes again; when
none answers, the request fails with :class:`~hllama.errors.UpstreamUnavailable` (HTTP 502) while other aliases
keep working. A client that leaves closes the upstream stream, which stops the engine's generation too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from hllama.engine.grammar import ANY_OBJECT, Pattern, Structure
from hllama.engine.tools import ToolCall
from hllama.errors import InvalidOption, UpstreamUnavailable
from hllama.resolve import Resolved

log = logging.getLogger(__name__)

#: How long a replica that failed is left alone before it is checked again (seconds).
RETRY_AFTER = 5.0

#: Connecting and health checks give up after this long; an answer may take as long as it takes.
CONNECT_TIMEOUT = 5.0


def is_upstream(resolved: Resolved) -> bool:
    """Whether the alias is served by an engine in another process (one it names, or a vLLM hllama starts)."""
    return bool(resolved.load.upstream) or resolved.load.engine == "vllm"


@dataclass
class Replica:
    url: str
    in_flight: int = 0
    down_since: float | None = None  # on the monotonic clock; None: answering
    reason: str = ""


class Upstream:
    """The engines serving one alias. Stands where a loaded model does in the scheduler."""

    reserved_bytes = 0  # nothing of it lives in this process
    plan = None  # no load plan: the weights are elsewhere
    precision = "served elsewhere"  # whatever the engines serving it chose
    context_length = 0
    generates = True  # a chat model (embedding models are not relayed)
    parallel = 256  # requests in flight to the engines at once (they batch their own); more wait here

    def __init__(self, alias: str, urls: list[str], *, api_key: str = "") -> None:
        self.alias = alias
        self.replicas = [Replica(url) for url in urls]
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def of(cls, resolved: Resolved) -> Upstream:
        """The engines an alias's ``upstream`` names, with the key its ``upstream_api_key_env`` holds."""
        variable = resolved.load.upstream_api_key_env
        key = os.environ.get(variable, "") if variable else ""
        if variable and not key:
            log.warning("'%s': the API key variable %s is not set", resolved.name, variable)
        return cls(resolved.name, resolved.load.upstream or [], api_key=key)

    def context_for(self, requested: int | None) -> int | None:
        """The context a request runs in: what the engine says it holds, else what the request asks for."""
        return self.context_length or requested

    def close(self) -> None:
        """Called from a worker thread when the scheduler lets it go: close the connections on their own loop."""
        client, loop = self._client, self._loop
        if client is not None and loop is not None and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(client.aclose(), loop)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._loop = asyncio.get_running_loop()
            self._client = httpx.AsyncClient(headers=self.headers, timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT))
        return self._client

    async def embed(self, model: str, texts: list[str]) -> tuple[list[list[float]], int]:
        """Vectors for ``texts`` (``POST /embeddings``) and the tokens they took, from a replica that answers."""
        chunks = [chunk async for chunk in self.stream({"model": model, "input": texts}, path="/embeddings")]
        document = chunks[0] if chunks else {}
        items = sorted((item for item in document.get("data") or [] if isinstance(item, dict)),
                       key=lambda item: item.get("index", 0))
        vectors = [[float(value) for value in item.get("embedding") or []] for item in items]
        if len(vectors) != len(texts):
            raise UpstreamUnavailable(self.alias, f"asked for {len(texts)} embeddings, got {len(vectors)}")
        usage = document.get("usage") if isinstance(document.get("usage"), dict) else {}
        return vectors, int(usage.get("prompt_tokens") or 0)

    async def stream(self, body: dict[str, Any], *, path: str = "/chat/completions") -> AsyncIterator[dict[str, Any]]:
        """The chunks of one streamed completion (or the one document of an answer that does not stream), from the
        least busy replica that answers."""
        tried: list[str] = []
        while (replica := await self._pick(exclude=tried)) is not None:
            tried.append(replica.url)
            replica.in_flight += 1
            began = False
            try:
                async with self.client.stream("POST", f"{replica.url}{path}", json=body) as response:
                    if response.status_code >= 500:
                        self._failed(replica, f"HTTP {response.status_code}")
                        continue
                    if response.status_code != 200:  # the engine refused the request: say why, as a 400
                        raise InvalidOption(f"the upstream engine refused the request: {await _error_text(response)}")
                    if not body.get("stream"):
                        try:
                            yield _chunk((await response.aread()).decode(errors="replace"))
                        except ValueError as exc:
                            raise UpstreamUnavailable(self.alias, f"{replica.url}: {exc}") from None
                        return
                    async for line in response.aiter_lines():
                        if not line.startswith("data:") or (data := line[5:].strip()) == "[DONE]":
                            continue
                        began = True
                        try:
                            chunk = _chunk(data)
                        except ValueError as exc:
                            raise UpstreamUnavailable(self.alias, f"{replica.url}: {exc}") from None
                        yield chunk
                    return
            except httpx.TransportError as exc:
                if began:  # part of the answer is out: it cannot go to another replica
                    self._failed(replica, _reason(exc))
                    raise UpstreamUnavailable(self.alias, f"{replica.url} failed mid-answer ({_reason(exc)})") from None
                self._failed(replica, _reason(exc))
            finally:
                replica.in_flight -= 1
        reasons = "; ".join(f"{replica.url}: {replica.reason}" for replica in self.replicas if replica.reason)
        raise UpstreamUnavailable(self.alias, reasons or "no replica answers")

    async def describe(self, model: str) -> dict[str, Any]:
        """What the first replica that answers says of ``model`` (``GET /models``), as ``model_info`` keys:
        ``upstream.url``, ``upstream.owned_by`` and ``upstream.context_length`` (vLLM's ``max_model_len``)."""
        for replica in self.replicas:
            try:
                response = await self.client.get(f"{replica.url}/models", timeout=CONNECT_TIMEOUT)
                listed = response.json().get("data") if response.status_code == 200 else None
            except (httpx.TransportError, ValueError, AttributeError):
                continue
            names = (model, f"{model}:latest")  # Ollama and hllama list their models with a tag
            entry = next((item for item in listed or [] if isinstance(item, dict) and item.get("id") in names), {})
            info: dict[str, Any] = {"upstream.url": replica.url}
            if isinstance(entry.get("owned_by"), str):
                info["upstream.owned_by"] = entry["owned_by"][:200]
            if isinstance(entry.get("max_model_len"), int):
                info["upstream.context_length"] = entry["max_model_len"]
            return info
        return {"upstream.url": self.replicas[0].url if self.replicas else "", "upstream.reachable": False}

    async def _pick(self, *, exclude: list[str]) -> Replica | None:
        """The answering replica with the fewest requests in flight; one that failed is checked again first."""
        for replica in self.replicas:
            if replica.down_since is not None and replica.url not in exclude \
                    and time.monotonic() - replica.down_since >= RETRY_AFTER:
                await self._check(replica)
        candidates = [replica for replica in self.replicas
                      if replica.down_since is None and replica.url not in exclude]
        return min(candidates, key=lambda replica: replica.in_flight, default=None)

    async def _check(self, replica: Replica) -> None:
        try:
            response = await self.client.get(f"{replica.url}/models", timeout=CONNECT_TIMEOUT)
        except httpx.TransportError as exc:
            self._failed(replica, _reason(exc))
            return
        if response.status_code >= 500:
            self._failed(replica, f"HTTP {response.status_code}")
            return
        log.info("'%s': upstream %s answers again", self.alias, replica.url)
        replica.down_since, replica.reason = None, ""

    def _failed(self, replica: Replica, reason: str) -> None:
        if replica.down_since is None:
            log.warning("'%s': upstream %s is unavailable (%s); skipping it", self.alias, replica.url, reason)
        replica.down_since, replica.reason = time.monotonic(), reason


def _reason(error: httpx.TransportError) -> str:
    return str(error) or type(error).__name__


async def _error_text(response: httpx.Response) -> str:
    text = (await response.aread())[:2000].decode(errors="replace")
    try:
        document = json.loads(text)
    except ValueError:
        return text.strip()[:500] or f"HTTP {response.status_code}"
    error = document.get("error", document) if isinstance(document, dict) else document
    message = error.get("message", error) if isinstance(error, dict) else error
    return str(message)[:500]


def _chunk(data: str) -> dict[str, Any]:
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


# ---------------------------------------------------------------------------------------------
# The request, in OpenAI's shape with vLLM's extras

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


# ---------------------------------------------------------------------------------------------
# The answer


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
