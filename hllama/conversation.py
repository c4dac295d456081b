"""The vocabulary every layer shares: the messages of a conversation, the calls a model makes, the pieces of its
thinking, and the patterns an answer may be held to. Plain data with no behaviour, so front ends, the runtime,
the backends and the engine all speak of the same things without importing one another."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from hllama.validation import Text

#: Who may speak in a modelfile's seed conversation.
SeedRole = Literal["system", "user", "assistant"]

#: Who may speak in an API conversation: the seed's roles and a tool returning its result.
Role = Literal["system", "user", "assistant", "tool"]

#: How hard to think, for templates that take a level (passed on as ``reasoning_effort``).
ThinkLevel = Literal["low", "medium", "high", "max"]
THINK_LEVELS: tuple[str, ...] = get_args(ThinkLevel)


class Message(BaseModel):
    """A message of a modelfile's seed conversation (or of a saved chat): who said what."""

    model_config = ConfigDict(extra="forbid")

    role: SeedRole = Field(description="system, user or assistant")
    content: Text = Field(description="the message's text")


class ToolCall(BaseModel):
    """A call the model made: the tool's name and its arguments (an object)."""

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ChatMessage(BaseModel):
    """A message of an API conversation, which may also be a tool's result or the assistant's tool calls."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str = ""
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None  # the tool whose result a "tool" message carries
    thinking: str | None = None  # an assistant's thinking, for templates that show it again
    images: list[bytes] | None = None  # checked image files (hllama.images), for a vision model


#: One turn of a conversation as the runtime takes it.
Turn = Message | ChatMessage


@dataclass(frozen=True)
class Thought:
    """A piece of the model's thinking, streamed beside the pieces of its answer."""

    text: str


@dataclass(frozen=True)
class Pattern:
    """A structure other than a JSON schema (vLLM's ``structured_outputs``): a ``regex`` the whole answer
    matches, a ``choice`` of exact answers (``text`` their JSON list), or a context-free ``grammar`` in Lark
    or GBNF (llama.cpp's) syntax."""

    kind: Literal["regex", "choice", "grammar"]
    text: str


#: Any JSON object: what JSON mode holds an answer to.
ANY_OBJECT: dict[str, Any] = {"type": "object"}
