"""OpenAI's wire format for chat and text completions, embeddings and models, as far as hllama honours it: the
request bodies and every response body."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hllama.conversation import Pattern
from hllama.engine import MAX_INPUTS, Structure
from hllama.errors import InvalidOption
from hllama.server.body import Lenient, Reply, omitted, required
from hllama.server.ollama_types import LogprobEntry


class ImageURL(Lenient):
    url: str = Field(description="a data:image/...;base64,... URI (remote URLs are not fetched)")


class ContentPart(Lenient):
    type: str = Field(description="text or image_url")
    text: str = Field("", description="a text part's text")
    image_url: ImageURL | None = Field(None, description="an image_url part's image")


class FunctionCall(Lenient):
    name: str = Field(description="the tool's name")
    arguments: str = Field("{}", description="its arguments, as a JSON text")


class ToolCallItem(Lenient):
    id: str = Field("", description="the call's id, which its tool message names")
    type: str = Field("function", description="function")
    function: FunctionCall = Field(description="the function called")


class ChatMessage(Lenient):
    role: str = Field(description="system, developer, user, assistant or tool")
    content: str | list[ContentPart] | None = Field("", description="text, or content parts")
    tool_calls: list[ToolCallItem] | None = Field(None, description="calls an assistant message made")
    tool_call_id: str | None = Field(None, description="the call a tool message answers")
    name: str | None = Field(None, description="the tool a tool message comes from")

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content if part.type == "text")
        return self.content or ""

    def images(self, where: str) -> list[bytes]:
        """The images of its image_url parts, checked."""
        from hllama.images import from_url

        parts = self.content if isinstance(self.content, list) else []
        return [from_url(part.image_url.url if part.image_url else "", where=where)
                for part in parts if part.type == "image_url"]


class ResponseFormat(Lenient):
    type: Literal["text", "json_object", "json_schema"] = Field("text", description="the answer's form")
    json_schema: dict[str, Any] | None = Field(None, description="{name, schema} for json_schema")


class StructuredOutputs(Lenient):
    """vLLM's request extra: exactly one of these holds the answer while it is decoded."""

    json_: dict[str, Any] | None = Field(None, alias="json", description="a JSON schema")
    regex: str | None = Field(None, description="a regular expression the whole answer matches")
    choice: list[str] | None = Field(None, min_length=1, description="the answer is exactly one of these")
    grammar: str | None = Field(None, description="a context-free grammar, in Lark or GBNF syntax")

    def structure(self) -> Structure:
        given = {name: value for name, value in (("json", self.json_), ("regex", self.regex),
                                                 ("choice", self.choice), ("grammar", self.grammar))
                 if value is not None}
        if len(given) != 1:
            raise InvalidOption("structured_outputs: give exactly one of json, regex, choice and grammar")
        (kind, value), = given.items()
        if kind == "json":
            return value
        return Pattern(kind, json.dumps(value) if kind == "choice" else value)


class ToolName(Lenient):
    name: str = Field(description="the function to call")


class NamedToolChoice(Lenient):
    type: Literal["function"] = Field("function", description="always function")
    function: ToolName = Field(description="the one function the answer calls")


class StreamOptions(Lenient):
    include_usage: bool = Field(False, description="a last chunk with token counts")


class _Sampling(Lenient):
    model: str = Field("", description="an alias, a Hub repo id or a local model")
    stream: bool = Field(False, description="server-sent events as the answer is generated")
    stream_options: StreamOptions | None = Field(None, description="what a stream carries")
    temperature: float | None = Field(None, description="unset: the alias's (or the default)")
    top_p: float | None = Field(None, description="unset: the alias's (or the default)")
    max_tokens: int | None = Field(None, description="most tokens to generate")
    stop: str | list[str] | None = Field(None, description="strings that end the answer")
    seed: int | None = Field(None, description="same seed, same answer")
    presence_penalty: float | None = Field(None, description="-2 to 2")
    frequency_penalty: float | None = Field(None, description="-2 to 2")

    def parameters(self) -> dict[str, Any]:
        """What the request sets; what it leaves out stays as the alias (or the defaults) say."""
        values = {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_tokens,
                  "stop": self.stop, "seed": self.seed, "presence_penalty": self.presence_penalty,
                  "frequency_penalty": self.frequency_penalty}
        return {key: value for key, value in values.items() if value is not None}


class Reasoning(Lenient):
    effort: str | None = Field(None, description="none, minimal, low, medium, high, xhigh")


#: OpenAI's reasoning efforts as Ollama's ``think`` (False: do not think).
EFFORT_TO_THINK: dict[str, bool | str] = {"none": False, "minimal": "low", "low": "low", "medium": "medium",
                                          "high": "high", "xhigh": "max", "ultra": "max", "max": "max"}


class ChatCompletionRequest(_Sampling):
    model_config = ConfigDict(json_schema_extra=required("model", "messages"))

    messages: list[ChatMessage] = Field(default_factory=list, description="the conversation")
    tools: list[dict[str, Any]] | None = Field(None, description="function tools the model may call")
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice = Field(
        "auto", description="none, auto, required (at least one call) or a named function (one call to it)")
    reasoning_effort: str | None = Field(None, description="a thinking model's effort; none: no thinking")
    reasoning: Reasoning | None = Field(None, description="the same, as {effort}")
    logprobs: bool = Field(False, description="each answer token's log-probability")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="and this many likeliest alternatives")

    @property
    def logprob_alternatives(self) -> int | None:
        """None: no log-probabilities; else how many alternatives with each token."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def tool_choice_name(self) -> str:
        """The choice as the engine takes it: none, auto, required, or the name of the function to call."""
        return self.tool_choice if isinstance(self.tool_choice, str) else self.tool_choice.function.name

    def think(self) -> bool | str | None:
        effort = self.reasoning_effort or (self.reasoning.effort if self.reasoning else None)
        if effort is None:
            return None
        if effort not in EFFORT_TO_THINK:
            raise ValueError(f"invalid reasoning effort {effort!r}: use one of {', '.join(EFFORT_TO_THINK)}")
        return EFFORT_TO_THINK[effort]
    max_completion_tokens: int | None = Field(None, description="most tokens to generate (max_tokens' new name)")
    response_format: ResponseFormat | None = Field(None, description="JSON mode, or a JSON schema")
    structured_outputs: StructuredOutputs | None = Field(
        None, description="vLLM's: a JSON schema, regex, choice or grammar the answer must follow")

    def parameters(self) -> dict[str, Any]:
        values = super().parameters()
        if self.max_completion_tokens is not None:
            values["max_new_tokens"] = self.max_completion_tokens
        return values


class CompletionRequest(_Sampling):
    model_config = ConfigDict(json_schema_extra=required("model", "prompt"))

    prompt: str | list[str] = Field("", description="the prompt (a list is joined)")
    suffix: str | None = Field(None, description="text after the insertion point (fill in the middle)")


class EmbeddingRequest(Lenient):
    model_config = ConfigDict(json_schema_extra=required("model", "input"))

    model: str = Field("", description="an alias, a Hub repo id or a local model")
    input: str | Annotated[list[Any], Field(max_length=MAX_INPUTS)] = Field(
        "", description=f"a text or a list of texts (at most {MAX_INPUTS})")
    encoding_format: str = Field("float", description="float or base64")
    dimensions: int | None = Field(None, ge=1, description="keep only this many leading dimensions")

    @property
    def texts(self) -> list[str]:
        texts = [self.input] if isinstance(self.input, str) else self.input
        if not texts or not all(isinstance(text, str) and text for text in texts):
            raise ValueError("input must be a non-empty string or a list of them (token arrays are not supported)")
        return texts


class ErrorDetail(BaseModel):
    message: str = Field(description="what went wrong")
    type: str = Field(description="invalid_request_error, not_found_error or api_error")
    param: str | None = Field(None, description="the parameter at fault, when one is")
    code: str | None = Field(None, description="a machine-readable code (invalid_api_key), when there is one")


class ErrorResponse(BaseModel):
    """Every error of OpenAI's API."""

    error: ErrorDetail = Field(description="the error")


# ---------------------------------------------------------------------------------------------------------------
# Response bodies (a field declared with ``omitted`` is left out when it has no value; others may be null)


class FunctionCallReply(Reply):
    name: str = Field(description="the tool called")
    arguments: str = Field(description="its arguments, as JSON text")


class ToolCallReply(Reply):
    index: int = Field(description="the call's place among the answer's calls")
    id: str = Field(description="the call's id, which its tool message names")
    type: Literal["function"] = Field("function", description="always a function")
    function: FunctionCallReply = Field(description="the function called")


class Logprobs(Reply):
    content: list[LogprobEntry] = Field(description="one entry per token of the answer")


class CachedTokens(Reply):
    cached_tokens: int = Field(description="prompt tokens taken from an earlier turn's KV cache")


class Usage(Reply):
    prompt_tokens: int = Field(description="the prompt's tokens")
    completion_tokens: int = Field(description="the answer's tokens")
    total_tokens: int = Field(description="both")
    prompt_tokens_details: CachedTokens = Field(description="of the prompt's tokens, the ones cached")


class AssistantMessage(Reply):
    role: Literal["assistant"] = Field("assistant", description="always the assistant")
    content: str = Field(description="the answer's text")
    reasoning: str | None = omitted("what a thinking model thought first")
    tool_calls: list[ToolCallReply] | None = omitted("the calls the answer makes")


class ChatChoice(Reply):
    index: int = Field(description="always 0 (one answer per request)")
    finish_reason: Literal["stop", "length", "tool_calls"] = Field(description="why the answer ended")
    logprobs: Logprobs | None = Field(description="each token's log-probability, when asked for")
    message: AssistantMessage = Field(description="the answer")


class _Completion(Reply):
    id: str = Field(description="the completion's id")
    object: str = Field(description="what this object is")
    created: int = Field(description="when it was made (Unix seconds)")
    model: str = Field(description="the model asked for")
    system_fingerprint: str = Field("fp_hllama", description="the serving configuration")


class ChatCompletion(_Completion):
    """A whole chat completion."""

    object: Literal["chat.completion"] = Field("chat.completion", description="a chat completion")
    choices: list[ChatChoice] = Field(description="the answer")
    usage: Usage = Field(description="the tokens read and written")


class Delta(Reply):
    role: Literal["assistant"] | None = omitted("the assistant, in the first chunk")
    content: str | None = omitted("this piece of the answer")
    reasoning: str | None = omitted("this piece of a thinking model's thinking")
    tool_calls: list[ToolCallReply] | None = omitted("the answer's calls, in a chunk of their own")


class ChunkChoice(Reply):
    index: int = Field(description="always 0")
    delta: Delta = Field(description="what this chunk adds")
    finish_reason: Literal["stop", "length", "tool_calls"] | None = Field(description="in the last chunk, why")
    logprobs: Logprobs | None = Field(description="in the last chunk, when asked for: every token's")


class ChatCompletionChunk(_Completion):
    """One server-sent chunk of a streamed chat completion."""

    object: Literal["chat.completion.chunk"] = Field("chat.completion.chunk", description="a chunk")
    choices: list[ChunkChoice] = Field(description="this chunk's piece (none in the usage chunk)")
    usage: Usage | None = omitted("in a last chunk of its own, when stream_options.include_usage asks")


class TextChoice(Reply):
    index: int = Field(description="always 0")
    finish_reason: Literal["stop", "length", "tool_calls"] = Field(description="why the text ended")
    text: str = Field(description="the text")
    logprobs: None = Field(description="always null")


class TextCompletion(_Completion):
    """A whole text completion."""

    object: Literal["text_completion"] = Field("text_completion", description="a text completion")
    choices: list[TextChoice] = Field(description="the text")
    usage: Usage = Field(description="the tokens read and written")


class TextChunkChoice(Reply):
    index: int = Field(description="always 0")
    text: str = Field(description="this piece of the text")
    finish_reason: Literal["stop", "length", "tool_calls"] | None = Field(description="in the last chunk, why")
    logprobs: None = Field(description="always null")


class TextCompletionChunk(_Completion):
    """One server-sent chunk of a streamed text completion."""

    object: Literal["text_completion"] = Field("text_completion", description="a text completion's chunk")
    choices: list[TextChunkChoice] = Field(description="this chunk's piece (none in the usage chunk)")
    usage: Usage | None = omitted("in a last chunk of its own, when stream_options.include_usage asks")


class Embedding(Reply):
    object: Literal["embedding"] = Field("embedding", description="an embedding")
    embedding: list[float] | str = Field(description="the unit-length vector, or its float32s in base64")
    index: int = Field(description="the input's place")


class EmbeddingUsage(Reply):
    prompt_tokens: int = Field(description="the inputs' tokens")
    total_tokens: int = Field(description="the same")


class EmbeddingList(Reply):
    """``/v1/embeddings``: one vector per input."""

    object: Literal["list"] = Field("list", description="a list")
    data: list[Embedding] = Field(description="the vectors, in the inputs' order")
    model: str = Field(description="the model asked for")
    usage: EmbeddingUsage = Field(description="the tokens read")


class ModelObject(Reply):
    """A model that ``model`` may name."""

    id: str = Field(description="its name, with its tag")
    object: Literal["model"] = Field("model", description="a model")
    created: int = Field(description="now (Unix seconds)")
    owned_by: str = Field(description="its Hub organisation, or library")


class ModelList(Reply):
    """``/v1/models``: every alias and cached model."""

    object: Literal["list"] = Field("list", description="a list")
    data: list[ModelObject] = Field(description="the models")
