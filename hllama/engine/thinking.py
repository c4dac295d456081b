"""Thinking: models that reason before they answer write ``<think>...</think>`` first (Qwen3,
DeepSeek-R1 distills, SmolLM3, ...), and clients want the two apart: Ollama's ``thinking``, OpenAI's
``reasoning``. Some templates open the block in the prompt itself, so the answer starts inside it.

:class:`ThinkingSplitter` separates a streamed answer as it comes, never showing a piece of a tag.
"""

from __future__ import annotations

from typing import Any

from hllama.conversation import Thought
from hllama.engine.stops import StopMatcher

OPEN, CLOSE = "<think>", "</think>"

def supports_thinking(template: str | None) -> bool:
    """Whether a chat template knows of thinking (Ollama's ``thinking`` capability)."""
    return bool(template) and (OPEN in template or "enable_thinking" in template)


def opens_thinking(prompt_text: str) -> bool:
    """The prompt ends inside a think block: the answer starts with thinking."""
    return prompt_text.rstrip().endswith(OPEN)


class ThinkingSplitter:
    """Feed pieces of an answer; get back (thinking, content) pieces that are safe to show."""

    def __init__(self, *, thinking_open: bool = False) -> None:
        self.text = ""
        self._thinking_from: int | None = 0 if thinking_open else None
        self._content_from: int | None = None
        self._thinking = StopMatcher([CLOSE])  # the thinking ends where </think> begins
        self._content_shown = ""
        self._undecided = not thinking_open  # the answer may yet begin with <think>

    def feed(self, piece: str) -> tuple[str, str]:
        self.text += piece
        if self._undecided:
            head = self.text.lstrip()
            if head.startswith(OPEN):
                self._thinking_from = len(self.text) - len(head) + len(OPEN)
            elif OPEN.startswith(head):
                return "", ""  # could still become <think>
            else:
                self._content_from = 0
            self._undecided = False
        thinking = ""
        if self._thinking_from is not None and self._content_from is None:
            thinking = self._thinking.feed(self.text[self._thinking_from:])
            if self._thinking.stopped:
                self._content_from = self._thinking_from + len(self._thinking.text) + len(CLOSE)
        return thinking, self._content()

    def finish(self) -> tuple[str, str]:
        """The rest: an unclosed block is all thinking; an answer too short to tell is content."""
        if self._undecided:
            self._content_from, self._undecided = 0, False
        if self._content_from is None:
            return self._thinking.flush(self.text[self._thinking_from or 0:]), ""
        return "", self._content()

    @property
    def thinking(self) -> str:
        return self._thinking.text

    def _content(self) -> str:
        if self._content_from is None:
            return ""
        content = self.text[self._content_from:]
        if self._thinking_from is not None:
            content = content.lstrip()  # the blank line after </think> is not part of the answer
        piece = content[len(self._content_shown):]
        self._content_shown = content
        return piece


class ThinkingParts:
    """One answer's text as :class:`Thought` and content pieces, for any prompt.

    For a prompt of a model that does not think (``prompt.thinking`` is None) the text passes as it
    is; when the thinking was not wanted (``False``) it is dropped.
    """

    def __init__(self, prompt: Any) -> None:
        wanted = getattr(prompt, "thinking", None)
        self.show_thinking = bool(wanted)
        self.splitter = ThinkingSplitter(thinking_open=opens_thinking(prompt.text)) if wanted is not None else None

    def of(self, text: str) -> list[str | Thought]:
        if not text:
            return []
        if self.splitter is None:
            return [text]
        return self._pair(*self.splitter.feed(text))

    def finish(self) -> list[str | Thought]:
        return self._pair(*self.splitter.finish()) if self.splitter else []

    @property
    def thinking(self) -> str:
        return self.splitter.thinking if self.splitter and self.show_thinking else ""

    def _pair(self, thought: str, content: str) -> list[str | Thought]:
        return [*([Thought(thought)] if thought and self.show_thinking else []), *([content] if content else [])]
