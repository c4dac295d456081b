"""OpenAI's wire format for chat and text completions, as far as hllama honours it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Lenient):
    type: str
    text: str = ""


class FunctionCall(_Lenient):
    name: str
    arguments: str = "{}"  # a JSON text, in OpenAI's shape


class ToolCallItem(_Lenient):
    id: str = ""
    type: str = "function"
    function: FunctionCall


class ChatMessage(_Lenient):
    role: str
    content: str | list[ContentPart] | None = ""
    tool_calls: list[ToolCallItem] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content if part.type == "text")
        return self.content or ""


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class _Sampling(_Lenient):
    model: str = ""
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    def parameters(self) -> dict[str, Any]:
        """What the request sets; what it leaves out stays as the alias (or the defaults) say."""
        values = {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_tokens,
                  "stop": self.stop, "seed": self.seed, "presence_penalty": self.presence_penalty,
                  "frequency_penalty": self.frequency_penalty}
        return {key: value for key, value in values.items() if value is not None}


class Reasoning(_Lenient):
    effort: str | None = None


#: OpenAI's reasoning efforts as Ollama's ``think`` (False: do not think).
EFFORT_TO_THINK: dict[str, bool | str] = {"none": False, "minimal": "low", "low": "low", "medium": "medium",
                                          "high": "high", "xhigh": "max", "ultra": "max", "max": "max"}


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    reasoning_effort: str | None = None
    reasoning: Reasoning | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @property
    def logprob_alternatives(self) -> int | None:
        """None: no log-probabilities; else how many alternatives with each token."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def think(self) -> bool | str | None:
        effort = self.reasoning_effort or (self.reasoning.effort if self.reasoning else None)
        if effort is None:
            return None
        if effort not in EFFORT_TO_THINK:
            raise ValueError(f"invalid reasoning effort {effort!r}: use one of {', '.join(EFFORT_TO_THINK)}")
        return EFFORT_TO_THINK[effort]
    max_completion_tokens: int | None = None
    response_format: ResponseFormat | None = None

    def parameters(self) -> dict[str, Any]:
        values = super().parameters()
        if self.max_completion_tokens is not None:
            values["max_new_tokens"] = self.max_completion_tokens
        return values


class CompletionRequest(_Sampling):
    prompt: str | list[str] = ""
    suffix: str | None = None


class EmbeddingRequest(_Lenient):
    model: str = ""
    input: str | list[Any] = ""
    encoding_format: str = "float"
    dimensions: int | None = Field(None, ge=1)

    @property
    def texts(self) -> list[str]:
        texts = [self.input] if isinstance(self.input, str) else self.input
        if not texts or not all(isinstance(text, str) and text for text in texts):
            raise ValueError("input must be a non-empty string or a list of them (token arrays are not supported)")
        return texts
