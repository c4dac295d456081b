"""Finding tool calls in what a model writes, whole and streamed."""

import pytest

from hllama.conversation import ToolCall
from hllama.engine import supports_tools
from hllama.engine.tools import ToolCallStream, parse_tool_calls

WEATHER = ToolCall(name="get_weather", arguments={"city": "Paris"})
TIME = ToolCall(name="get_time", arguments={})

# (model output, content, calls)
ANSWERS = [
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', "", [WEATHER]),
    ('Let me look.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
     '<tool_call>{"name": "get_time"}</tool_call>', "Let me look.", [WEATHER, TIME]),
    ('<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}', "", [WEATHER]),  # unclosed
    ('{"name": "get_weather", "parameters": {"city": "Paris"}}', "", [WEATHER]),  # Llama 3.x
    ('[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]', "",
     [WEATHER, TIME]),
    ('{"city": "Paris"}', '{"city": "Paris"}', []),  # JSON, but no call: JSON mode's answers stay content
    ("<tool_call>not json</tool_call>", "<tool_call>not json</tool_call>", []),
    ('{"name": "x", "arguments": [1]}', '{"name": "x", "arguments": [1]}', []),
    ("It is sunny in Paris.", "It is sunny in Paris.", []),
]


@pytest.mark.parametrize("text, content, calls", ANSWERS)
def test_parse_tool_calls(text: str, content: str, calls: list[ToolCall]):
    assert parse_tool_calls(text) == (content, calls)


@pytest.mark.parametrize("text, content, calls", ANSWERS)
@pytest.mark.parametrize("size", [1, 3, 1000])
def test_streamed_content_never_shows_part_of_a_call(text: str, content: str, calls: list[ToolCall], size: int):
    stream = ToolCallStream()
    shown = "".join(stream.feed(text[start:start + size]) for start in range(0, len(text), size))
    assert "<tool" not in shown and (not calls or "{" not in shown)
    rest, found = stream.finish()
    assert found == calls
    assert (shown + rest).strip() == content if calls else shown + rest == text


def test_content_streams_before_a_call_begins():
    stream = ToolCallStream()
    assert stream.feed("Let me look.") == "Let me look."
    assert stream.feed(" <tool") == " "  # may begin a call: held
    assert stream.feed('_call>{"name": "get_time"}') == ""
    assert stream.finish() == ("", [TIME])


def test_supports_tools():
    assert supports_tools("{% if tools %}{{ tools | tojson }}{% endif %}")
    assert not supports_tools("{% for message in messages %}{{ message.content }}{% endfor %}")
    assert not supports_tools(None)
