"""The seam every engine sits behind: what the runtime may ask of a loaded model, wherever it runs.

A :class:`Backend` is what the scheduler holds for an alias once it is loaded: the in-process engine
(:mod:`~hllama.backends.local`), engines already running elsewhere (:mod:`~hllama.backends.upstream`), or a vLLM
server hllama starts (:mod:`~hllama.backends.vllm`). The runtime sees nothing else of them, so adding an engine adds
a module here, not a branch above. Every answer streams the same items: text pieces, :class:`Thought` pieces, then
one :class:`Done` (a local answer opens with a :class:`Prompted`).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from hllama.conversation import Thought, ToolCall, Turn

if TYPE_CHECKING:
    from hllama.aliases.resolve import Resolved
    from hllama.engine import Embeddings, Finished, Structure
    from hllama.models.footprint import Plan

#: vLLM's meaning: "auto" (the model decides), "required" (at least one call), "none", or a tool's name.
ToolChoice = Literal["auto", "required", "none"] | str


@dataclass(frozen=True)
class Chat:
    """A conversation to answer, with what the answer must follow."""

    history: list[Turn]
    structure: Structure | None = None  # a JSON schema or pattern the whole answer follows
    tools: list[dict[str, Any]] | None = None  # OpenAI-shaped tool definitions offered to the model
    tool_choice: ToolChoice = "auto"
    think: bool | str | None = None  # None: the model's way; False: no thinking shown; a level for templates
    think_if_able: bool = False  # a model that cannot think answers without (Anthropic's way), not a 400 (Ollama's)
    logprobs: int | None = None  # None: none; else how many alternatives each token's entry lists
    truncate: bool = True  # drop the oldest turns to fit the context, else refuse what does not fit
    shift: bool = True  # an answer that fills the window goes on after more turns are dropped


@dataclass(frozen=True)
class Completion:
    """Text to continue without a chat turn: raw (``text`` alone), infill (``text`` before ``suffix``), or the
    token ``context`` of an earlier exchange followed by ``text`` as the next user turn."""

    text: str
    suffix: str | None = None
    context: list[int] | None = None
    structure: Structure | None = None
    logprobs: int | None = None


@dataclass(frozen=True)
class Prompted:
    """The first item of a local answer, once its prompt is built: what it takes, and what had to go to fit."""

    prompt_tokens: int
    dropped_turns: int = 0  # the oldest turns left out so that the prompt fits the context


@dataclass(frozen=True)
class Done:
    """The last item of an answer: the engine's account of it."""

    finished: Finished
    prompt_ids: list[int] = field(default_factory=list)  # the tokens read (empty where the engine is elsewhere)
    tool_calls: tuple[ToolCall, ...] = ()  # found in the answer when the request offered tools
    thinking: str = ""  # what a thinking model thought before it answered, when that was wanted
    logged_messages: list[dict[str, Any]] = field(default_factory=list)  # the conversation, for the request log


#: What an answer streams (a backend that builds no prompt here sends no :class:`Prompted`).
Event = str | Thought | Prompted | Done


@dataclass(frozen=True)
class Description:
    """What ``/api/ps`` and ``/api/show`` say of a loaded backend."""

    plan: Plan | None  # how its weights were loaded here; None: they live elsewhere
    resident_bytes: int  # what it holds now (measured), or what it reserves
    batch_width: int | None = None  # rows its batching engine decodes together now; None: it has none


class Backend(Protocol):
    """A loaded model as the runtime uses it."""

    @property
    def reserved_bytes(self) -> int:
        """What it counts against the memory budget (0: it takes no memory in this process)."""

    @property
    def precision(self) -> str:
        """How its weights are held ("bfloat16", "4bit", ..., or "served elsewhere")."""

    @property
    def parallel(self) -> int | None:
        """Requests it runs at once; None: as many as the scheduler's ``num_parallel``."""

    @property
    def generates(self) -> bool:
        """False for an embedding model, which only embeds."""

    def context_for(self, requested: int | None) -> int | None:
        """The context window a request that asks for ``requested`` tokens (None: any) runs in."""

    def chat(self, resolved: Resolved, request: Chat) -> AsyncIterator[Event]:
        """Answer a conversation. Close the iterator (``aclose``) to stop early."""

    def complete(self, resolved: Resolved, request: Completion) -> AsyncIterator[Event]:
        """Continue text (raw, infill, or after an earlier exchange's tokens)."""

    async def embed(self, resolved: Resolved, texts: list[str], *, truncate: bool = True,
                    cancel: threading.Event | None = None) -> Embeddings:
        """Raw vectors for ``texts``; ``cancel`` (set when the client is gone) stops between texts."""

    async def count_tokens(self, resolved: Resolved, history: list[Turn], *,
                           tools: list[dict[str, Any]] | None = None) -> int:
        """How many tokens the conversation's prompt takes."""

    def describe(self) -> Description:
        """What it holds now, for the model listings."""

    def cancel_all(self) -> None:
        """Stop every answer under way (the server is going away); safe from a signal handler."""

    def close(self) -> None:
        """Let go of everything it holds (called in a worker thread when the scheduler unloads it)."""
