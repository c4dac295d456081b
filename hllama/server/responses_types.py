"""OpenAI's Responses API on the wire (``POST /v1/responses``, stateless as Ollama serves it), each field described.

Requests are lenient (``store``, ``metadata``, ``parallel_tool_calls`` are accepted and change nothing), responses
exact.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hllama.server.body import Lenient, omitted, required


class ContentPart(Lenient):
    type: str = Field(description="input_text, output_text or input_image")
    text: str | None = Field(None, description="the part's text")
    image_url: str | None = Field(None, description="an input_image's data:image/...;base64,... URI")


class InputItem(Lenient):
    """A message (``role`` and ``content``), a ``function_call`` the model made, or a ``function_call_output``."""

    type: str = Field("message", description="message, function_call, function_call_output or reasoning")
    role: str | None = Field(None, description="a message's role: user, system, developer or assistant")
    content: str | list[ContentPart] | None = Field(None, description="a message's text, or its parts")
    call_id: str | None = Field(None, description="a call's id, which its output names")
    name: str | None = Field(None, description="the function a call calls")
    arguments: str | None = Field(None, description="a call's arguments, as JSON text")
    output: str | list[ContentPart] | None = Field(None, description="a function_call_output's result")

    @property
    def text(self) -> str:
        parts = self.content if isinstance(self.content, list) else [ContentPart(type="input_text",
                                                                                 text=self.content or "")]
        return "".join(part.text or "" for part in parts if part.type in ("input_text", "output_text", "text"))

    @property
    def output_text(self) -> str:
        if isinstance(self.output, list):
            return "".join(part.text or "" for part in self.output)
        return self.output or ""


class FunctionTool(Lenient):
    type: str = Field("function", description="function, or namespace (a named group of functions); hosted tools "
                                              "(web_search, file_search, ...) are left out, as they cannot run here")
    name: str = Field("", description="the function's (or the namespace's) name")
    description: str | None = Field(None, description="what it does, for the model")
    parameters: dict[str, Any] | None = Field(None, description="the JSON schema of its arguments")
    tools: list[FunctionTool] | None = Field(None, description="a namespace's functions")


class NamedFunction(Lenient):
    type: Literal["function"] = Field("function", description="always function")
    name: str = Field(description="the one function the answer calls")


class TextFormat(Lenient):
    type: Literal["text", "json_object", "json_schema"] = Field("text", description="the answer's form")
    name: str | None = Field(None, description="a json_schema format's name")
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="a json_schema format's schema")


class TextConfig(Lenient):
    format: TextFormat | None = Field(None, description="plain text, any JSON object, or JSON of a schema")


class ReasoningConfig(Lenient):
    effort: str | None = Field(None, description="none, minimal, low, medium, high, xhigh")


class ResponsesRequest(Lenient):
    model_config = ConfigDict(json_schema_extra=required("model"))

    model: str = Field("", description="an alias, a Hub repo id or a local model")
    input: str | list[InputItem] = Field(description="the user's text, or the conversation's items")
    instructions: str | None = Field(None, description="the system prompt")
    tools: list[FunctionTool] | None = Field(None, description="function tools the model may call")
    tool_choice: Literal["none", "auto", "required"] | NamedFunction = Field(
        "auto", description="none, auto, required, or a named function")
    text: TextConfig | None = Field(None, description="the answer's format")
    reasoning: ReasoningConfig | None = Field(None, description="a thinking model's effort")
    max_output_tokens: int | None = Field(None, ge=1, description="most tokens to generate")
    temperature: float | None = Field(None, ge=0, description="unset: the alias's (or the default)")
    top_p: float | None = Field(None, gt=0, le=1, description="unset: the alias's (or the default)")
    stream: bool = Field(False, description="typed server-sent events as the answer is generated")
    previous_response_id: str | None = Field(None, description="a stored response this one continues: its "
                                                               "conversation and answer come before this input")
    store: bool = Field(True, description="keep the response, to continue or read it later by its id")

    def parameters(self) -> dict[str, Any]:
        values = {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_output_tokens}
        return {key: value for key, value in values.items() if value is not None}


# ---------------------------------------------------------------------------------------------
# Responses


class OutputText(BaseModel):
    type: Literal["output_text"] = Field("output_text", description="an output text part")
    text: str = Field(description="the answer's text")
    annotations: list[Any] = Field(default_factory=list, description="always empty")


class ReasoningText(BaseModel):
    type: Literal["reasoning_text"] = Field("reasoning_text", description="a reasoning text part")
    text: str = Field(description="what the model thought")


class MessageItem(BaseModel):
    type: Literal["message"] = Field("message", description="a message item")
    id: str = Field(description="msg_ and a random id")
    status: Literal["in_progress", "completed", "incomplete"] = Field(description="whether it is whole")
    role: Literal["assistant"] = Field("assistant", description="always the assistant")
    content: list[OutputText] = Field(description="its text")


class ReasoningItem(BaseModel):
    type: Literal["reasoning"] = Field("reasoning", description="a reasoning item")
    id: str = Field(description="rs_ and a random id")
    summary: list[Any] = Field(default_factory=list, description="always empty")
    content: list[ReasoningText] = Field(description="the thinking")


class FunctionCallItem(BaseModel):
    type: Literal["function_call"] = Field("function_call", description="a function call item")
    id: str = Field(description="fc_ and a random id")
    call_id: str = Field(description="call_ and a random id, which its output names")
    name: str = Field(description="the function called")
    namespace: str | None = omitted("the namespace the function was offered in, if any")
    arguments: str = Field(description="its arguments, as JSON text")
    status: Literal["in_progress", "completed"] = Field(description="whether it is whole")


OutputItem = ReasoningItem | MessageItem | FunctionCallItem


class InputTokensDetails(BaseModel):
    cached_tokens: int = Field(description="prompt tokens taken from an earlier turn's cache")


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = Field(0, description="not counted apart: 0")


class ResponseUsage(BaseModel):
    input_tokens: int = Field(description="tokens of the prompt")
    output_tokens: int = Field(description="tokens generated")
    total_tokens: int = Field(description="both")
    input_tokens_details: InputTokensDetails = Field(description="of the prompt")
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails,
                                                       description="of the answer")


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"] = Field(description="why the answer is incomplete")


class ResponseObject(BaseModel):
    id: str = Field(description="resp_ and a random id")
    object: Literal["response"] = Field("response", description="a response")
    created_at: int = Field(description="Unix time")
    status: Literal["in_progress", "completed", "incomplete"] = Field(description="where the answer stands")
    model: str = Field(description="the model as the request named it")
    output: list[OutputItem] = Field(description="reasoning, the message and function calls")
    usage: ResponseUsage | None = Field(None, description="token counts, once complete")
    incomplete_details: IncompleteDetails | None = Field(None, description="why it stopped short, if it did")
    instructions: str | None = Field(None, description="the request's instructions")
    max_output_tokens: int | None = Field(None, description="the request's limit")
    temperature: float | None = Field(None, description="the request's temperature")
    top_p: float | None = Field(None, description="the request's top_p")
    tools: list[FunctionTool] = Field(default_factory=list, description="the request's tools")
    tool_choice: Any = Field("auto", description="the request's tool_choice")
    parallel_tool_calls: bool = Field(True, description="always true")
    previous_response_id: str | None = Field(None, description="the stored response this one continues")
    store: bool = Field(True, description="whether it is kept")
    error: None = Field(None, description="always null: failures are HTTP errors or error events")


class DeletedResponse(BaseModel):
    id: str = Field(description="the response's id")
    object: Literal["response"] = Field("response", description="a response")
    deleted: Literal[True] = Field(True, description="it is no longer kept")


class InputTokensRequest(ResponsesRequest):
    """The request whose input is counted (its answer settings change nothing)."""


class InputTokens(BaseModel):
    object: Literal["response.input_tokens"] = Field("response.input_tokens", description="a count")
    input_tokens: int = Field(description="tokens the request's input takes with the model's chat template")


class StreamEvent(BaseModel):
    """One typed event; only the fields its type uses are sent."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="response.created, response.output_text.delta, ...")
    sequence_number: int = Field(description="its place in the stream")
