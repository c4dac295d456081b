"""Anthropic's Messages API on the wire: request and response shapes, each field described.

Requests are lenient (unknown fields are ignored, as ``metadata`` or ``service_tier`` are), responses exact.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hllama.server.body import Lenient, required


class ImageSource(Lenient):
    type: str = Field(description="base64 (url is not fetched)")
    media_type: str | None = Field(None, description="image/png, image/jpeg, image/webp or image/gif")
    data: str | None = Field(None, description="the image file, base64")
    url: str | None = Field(None, description="refused: remote images are not fetched")


class ContentBlock(Lenient):
    """One block of a message: text, image, tool_use (an assistant's call), tool_result (a user's answer to one)
    or thinking (an assistant's earlier thinking)."""

    type: str = Field(description="text, image, tool_use, tool_result, thinking or redacted_thinking")
    text: str | None = Field(None, description="a text block's text")
    id: str | None = Field(None, description="a tool_use block's id, which its tool_result names")
    name: str | None = Field(None, description="the tool a tool_use block calls")
    input: dict[str, Any] | None = Field(None, description="a tool_use block's arguments")
    tool_use_id: str | None = Field(None, description="the call a tool_result block answers")
    content: str | list[ContentBlock] | None = Field(None, description="a tool_result block's content")
    is_error: bool | None = Field(None, description="whether a tool_result reports a failure")
    thinking: str | None = Field(None, description="a thinking block's text")
    source: ImageSource | None = Field(None, description="an image block's image")

    @property
    def plain_text(self) -> str:
        """A tool_result's content as text."""
        if isinstance(self.content, list):
            return "".join(block.text or "" for block in self.content if block.type == "text")
        return self.content or ""


class InputMessage(Lenient):
    role: Literal["user", "assistant", "system"] = Field(
        description="user or assistant; system for an instruction in the middle of the conversation (the "
                    "mid-conversation-system beta)")
    content: str | list[ContentBlock] = Field(description="text, or a list of blocks")

    @property
    def blocks(self) -> list[ContentBlock]:
        return [ContentBlock(type="text", text=self.content)] if isinstance(self.content, str) else self.content


class Tool(Lenient):
    name: str = Field(description="the tool's name")
    description: str | None = Field(None, description="what it does, for the model")
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"},
                                         description="the JSON schema of its input")


class ToolChoice(Lenient):
    type: Literal["auto", "any", "tool", "none"] = Field("auto", description="auto, any (some tool), tool (the "
                                                                             "one named) or none")
    name: str | None = Field(None, description="the tool, when type is tool")


class ThinkingConfig(Lenient):
    type: Literal["enabled", "disabled", "adaptive"] = Field(description="whether a thinking model thinks")
    budget_tokens: int | None = Field(None, ge=0, description="accepted; the model's template decides its length")


class OutputFormat(Lenient):
    type: Literal["json_schema"] = Field(description="always json_schema")
    schema_: dict[str, Any] = Field(alias="schema", description="the JSON schema the answer follows")


class OutputConfig(Lenient):
    format: OutputFormat | None = Field(None, description="structured output, enforced while decoding")
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = Field(
        None, description="with thinking enabled: how hard a thinking model thinks")


class MessagesRequest(Lenient):
    model_config = ConfigDict(json_schema_extra=required("model"))

    model: str = Field("", description="an alias, a Hub repo id or a local model")
    max_tokens: int = Field(description="most tokens to generate", ge=1)
    messages: list[InputMessage] = Field(description="the conversation")
    system: str | list[ContentBlock] | None = Field(None, description="the system prompt, as text or text blocks")
    stop_sequences: list[str] | None = Field(None, description="strings that end the answer")
    temperature: float | None = Field(None, ge=0, description="unset: the alias's (or the default)")
    top_p: float | None = Field(None, gt=0, le=1, description="unset: the alias's (or the default)")
    top_k: int | None = Field(None, ge=0, description="unset: the alias's (or the default)")
    tools: list[Tool] | None = Field(None, description="tools the model may call")
    tool_choice: ToolChoice | None = Field(None, description="whether and which tool the model must call")
    thinking: ThinkingConfig | None = Field(None, description="a thinking model's thinking, on or off")
    stream: bool = Field(False, description="server-sent events as the answer is generated")
    output_config: OutputConfig | None = Field(None, description="structured output and effort")

    def think(self) -> bool | str | None:
        """Thinking on (at the effort asked for, if any) or off; None: as the model's template does by default."""
        if self.thinking is None:
            return None
        if self.thinking.type == "disabled":
            return False
        effort = self.output_config.effort if self.output_config else None
        return {"xhigh": "max"}.get(effort, effort) if effort else True

    @property
    def schema(self) -> dict[str, Any] | None:
        config = self.output_config
        return config.format.schema_ if config and config.format else None

    def parameters(self) -> dict[str, Any]:
        values = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                  "stop": self.stop_sequences, "max_new_tokens": self.max_tokens}
        return {key: value for key, value in values.items() if value is not None}


class CountTokensRequest(Lenient):
    model_config = ConfigDict(json_schema_extra=required("model"))

    model: str = Field("", description="an alias, a Hub repo id or a local model")
    messages: list[InputMessage] = Field(description="the conversation")
    system: str | list[ContentBlock] | None = Field(None, description="the system prompt")
    tools: list[Tool] | None = Field(None, description="tools offered to the model")


# ---------------------------------------------------------------------------------------------
# Responses


class TextBlock(BaseModel):
    type: Literal["text"] = Field("text", description="always text")
    text: str = Field(description="the answer's text")


class ThinkingBlock(BaseModel):
    type: Literal["thinking"] = Field("thinking", description="always thinking")
    thinking: str = Field(description="what the model thought before it answered")
    signature: str = Field("", description="empty: local thinking is not signed")


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"] = Field("tool_use", description="always tool_use")
    id: str = Field(description="the call's id, which its tool_result names")
    name: str = Field(description="the tool called")
    input: dict[str, Any] = Field(description="the call's arguments")


OutputBlock = TextBlock | ThinkingBlock | ToolUseBlock


class Usage(BaseModel):
    input_tokens: int = Field(description="tokens of the prompt the model read")
    output_tokens: int = Field(description="tokens generated")
    cache_read_input_tokens: int = Field(0, description="prompt tokens taken from an earlier turn's cache")


class MessageResponse(BaseModel):
    id: str = Field(description="msg_ and a random id")
    type: Literal["message"] = Field("message", description="always message")
    role: Literal["assistant"] = Field("assistant", description="always assistant")
    model: str = Field(description="the model as the request named it")
    content: list[OutputBlock] = Field(description="thinking, text and tool_use blocks, in that order")
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"] | None = Field(
        description="why the answer ended; null until it has")
    stop_sequence: str | None = Field(None, description="the stop sequence that ended it, if one did")
    usage: Usage = Field(description="token counts")


class MessageStart(BaseModel):
    type: Literal["message_start"] = "message_start"
    message: MessageResponse = Field(description="the message so far: no content yet")


class ContentBlockStart(BaseModel):
    type: Literal["content_block_start"] = "content_block_start"
    index: int = Field(description="the block's place in the message")
    content_block: OutputBlock = Field(description="the block, empty")


class TextDelta(BaseModel):
    type: Literal["text_delta"] = "text_delta"
    text: str = Field(description="more of the text")


class ThinkingDelta(BaseModel):
    type: Literal["thinking_delta"] = "thinking_delta"
    thinking: str = Field(description="more of the thinking")


class InputJsonDelta(BaseModel):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str = Field(description="more of a tool call's input, as JSON text")


class ContentBlockDelta(BaseModel):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int = Field(description="the block it adds to")
    delta: TextDelta | ThinkingDelta | InputJsonDelta = Field(description="what it adds")


class ContentBlockStop(BaseModel):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int = Field(description="the block that is complete")


class MessageDeltaBody(BaseModel):
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"] = Field(
        description="why the answer ended")
    stop_sequence: str | None = Field(None, description="the stop sequence that ended it, if one did")


class MessageDelta(BaseModel):
    type: Literal["message_delta"] = "message_delta"
    delta: MessageDeltaBody = Field(description="the message's end")
    usage: Usage = Field(description="the final token counts")


class MessageStop(BaseModel):
    type: Literal["message_stop"] = "message_stop"


class ErrorBody(BaseModel):
    type: str = Field(description="invalid_request_error, authentication_error, not_found_error, "
                                  "overloaded_error or api_error")
    message: str = Field(description="what went wrong")


class ErrorResponse(BaseModel):
    """Every error of Anthropic's API."""

    type: Literal["error"] = Field("error", description="always error")
    error: ErrorBody = Field(description="the error")


class TokenCount(BaseModel):
    input_tokens: int = Field(description="tokens the prompt takes with this model's chat template")
