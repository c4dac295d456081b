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
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from hllama.aliases.resolve import Resolved
from hllama.backends.base import Chat, Completion, Description, Done, Event
from hllama.backends.openai_wire import Answer, chunk_of, completion_body, request_body
from hllama.conversation import Thought, Turn
from hllama.engine import Embeddings, Finished, Stats, TokenLogprob, conversation, structure_of
from hllama.errors import InvalidOption, NotSupported, UpstreamUnavailable

log = logging.getLogger(__name__)

#: How long a replica that failed is left alone before it is checked again (seconds).
RETRY_AFTER = 5.0

#: Connecting and health checks give up after this long; an answer may take as long as it takes.
CONNECT_TIMEOUT = 5.0


@dataclass
class Replica:
    url: str
    in_flight: int = 0
    down_since: float | None = None  # on the monotonic clock; None: answering
    reason: str = ""


class Upstream:
    """The engines serving one alias. Stands where a loaded model does in the scheduler."""

    reserved_bytes = 0  # nothing of it lives in this process
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

    async def embed(self, resolved: Resolved, texts: list[str], *, truncate: bool = True,
                    cancel: threading.Event | None = None) -> Embeddings:
        """Vectors for ``texts`` (``POST /embeddings``) and the tokens they took, from a replica that answers."""
        chunks = [chunk async for chunk in self.stream({"model": resolved.model, "input": texts},
                                                        path="/embeddings")]
        document = chunks[0] if chunks else {}
        items = sorted((item for item in document.get("data") or [] if isinstance(item, dict)),
                       key=lambda item: item.get("index", 0))
        vectors = [[float(value) for value in item.get("embedding") or []] for item in items]
        if len(vectors) != len(texts):
            raise UpstreamUnavailable(self.alias, f"asked for {len(texts)} embeddings, got {len(vectors)}")
        usage = document.get("usage") if isinstance(document.get("usage"), dict) else {}
        return Embeddings(vectors, int(usage.get("prompt_tokens") or 0))

    def describe(self) -> Description:
        return Description(plan=None, resident_bytes=self.reserved_bytes)

    def cancel_all(self) -> None:
        """Nothing to do here: closing a relayed stream stops the engine's generation."""

    def chat(self, resolved: Resolved, request: Chat) -> AsyncIterator[Event]:
        schema = request.structure if isinstance(request.structure, dict) else None
        messages = conversation(resolved, request.history, json_schema=schema)
        body = request_body(resolved, messages, structure=structure_of(resolved.parameters, request.structure),
                            tools=request.tools, tool_choice=request.tool_choice, think=request.think,
                            logprobs=request.logprobs, context=self.context_length)
        return self._relay(body, path="/chat/completions")

    def complete(self, resolved: Resolved, request: Completion) -> AsyncIterator[Event]:
        if request.context is not None:
            raise NotSupported(resolved.name, "context", "it is served by an engine in another process, "
                                                         "which does not take this model's token ids")
        body = completion_body(resolved, request.text, suffix=request.suffix, logprobs=request.logprobs,
                               context=self.context_length)
        return self._relay(body, path="/completions")

    async def count_tokens(self, resolved: Resolved, history: list[Turn], *,
                           tools: list[dict[str, Any]] | None = None) -> int:
        raise NotSupported(resolved.name, "counting tokens", "it is served by an engine in another process")

    async def _relay(self, body: dict[str, Any], *, path: str) -> AsyncIterator[Event]:
        """One request to the engines: its pieces as they come, then the answer they add up to."""
        started = time.perf_counter_ns()
        answer = Answer()
        first: int | None = None
        async with contextlib.aclosing(self.stream(body, path=path)) as chunks:  # a client that leaves
            async for chunk in chunks:
                content, thought = answer.add(chunk)
                if first is None and (content or thought):
                    first = time.perf_counter_ns()
                if thought:
                    yield Thought(thought)
                if content:
                    yield content
        ended = time.perf_counter_ns()
        first = first or ended
        stats = Stats(prompt_tokens=answer.prompt_tokens, generated_tokens=answer.completion_tokens,
                      prompt_eval_ns=first - started, eval_ns=ended - first, total_ns=ended - started,
                      cached_tokens=answer.cached_tokens,
                      done_reason="length" if answer.finish_reason == "length" else "stop")
        finished = Finished(text=answer.text, stats=stats, generated_ids=[], stop_sequence=answer.stop_sequence,
                            logprobs=tuple(_token_logprobs(answer.logprobs)))
        yield Done(finished=finished, tool_calls=tuple(answer.tool_calls()), thinking=answer.thinking,
                   logged_messages=body.get("messages") or [{"role": "user", "content": body.get("prompt", "")}])

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
                            yield chunk_of((await response.aread()).decode(errors="replace"))
                        except ValueError as exc:
                            raise UpstreamUnavailable(self.alias, f"{replica.url}: {exc}") from None
                        return
                    async for line in response.aiter_lines():
                        if not line.startswith("data:") or (data := line[5:].strip()) == "[DONE]":
                            continue
                        began = True
                        try:
                            chunk = chunk_of(data)
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

    async def model_info(self, model: str) -> dict[str, Any]:
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






def _token_logprobs(items: list[dict[str, Any]]) -> Iterator[TokenLogprob]:
    """OpenAI's per-token log-probabilities as the engine's."""
    for item in items:
        top = tuple((str(other.get("token", "")), float(other.get("logprob", 0.0)))
                    for other in item.get("top_logprobs") or [] if isinstance(other, dict))
        yield TokenLogprob(token=str(item.get("token", "")), logprob=float(item.get("logprob", 0.0)), top=top)
