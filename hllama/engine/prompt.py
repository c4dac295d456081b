"""From a resolved alias and a conversation to prompt tokens that fit the context.

The conversation is: the system prompt (with the JSON-mode instruction when asked), the alias's
seed messages, then the history. It is rendered with the modelfile's template, else the
tokenizer's chat template, else a plain ``User:``/``Assistant:`` format. When ``ctx`` is set,
whole turns are dropped from the oldest until the prompt leaves the answer room (:func:`answer_room`);
the system prompt and the newest user message always stay. An answer that fills the window anyway goes
on after a prompt with more turns dropped (:attr:`Prompt.refit`), as Ollama shifts its window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from hllama.aliases.resolve import Resolved
from hllama.conversation import ChatMessage, Message
from hllama.engine.thinking import supports_thinking
from hllama.engine.tokens import fewest_tokens
from hllama.engine.tools import ToolStyle, supports_tools, tool_style
from hllama.errors import ChatTemplateError, NotSupported, PromptTooLong

JSON_INSTRUCTION = "Answer with valid JSON only: a single JSON value, with no text before or after it."

#: Where the plain format's next turn would begin; used as an extra stop string.
FALLBACK_STOPS = ("\nUser:",)


def template_message(message: Message) -> dict[str, Any]:
    """A message as chat templates expect it (tool calls in OpenAI's shape, arguments as an object; a message
    with images as content parts, the images first, as vision models' templates take them)."""
    document: dict[str, Any] = {"role": message.role, "content": message.content}
    if isinstance(message, ChatMessage) and message.images:
        document["content"] = [*({"type": "image"} for _ in message.images),
                               {"type": "text", "text": message.content}]
        document["images"] = message.images  # taken out again by build_prompt, in order
    if isinstance(message, ChatMessage):
        if message.tool_calls:
            document["tool_calls"] = [{"type": "function", "function": call.model_dump()}
                                      for call in message.tool_calls]
        if message.tool_name:
            document["name"] = message.tool_name
        if message.thinking:
            document["reasoning_content"] = message.thinking  # the name Qwen3's and DeepSeek's templates use
    return document


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    text: str
    messages: list[dict[str, str]]
    dropped_turns: int = 0
    extra_stops: tuple[str, ...] = field(default_factory=tuple)
    thinking: bool | None = None  # None: the model does not think; else whether its thinking is wanted
    tool_style: ToolStyle | None = None  # how the model writes tool calls, when it was offered tools
    vision: dict[str, Any] | None = None  # a vision model's image inputs (pixel_values, ...), when images came
    # the same conversation with more of its oldest turns dropped, leaving at least this many tokens of the
    # window free; None when no turn is left to drop (or the window is not bounded)
    refit: Callable[[int], Prompt | None] | None = field(default=None, compare=False, repr=False)


#: The most of the window an answer of unlimited length is kept room for when older turns are dropped.
UNLIMITED_ANSWER_ROOM = 1024


def answer_room(max_new_tokens: int | None, context: int | None) -> int:
    """The tokens of the window a prompt leaves free for the answer: all of ``num_predict`` up to half the
    window; an unlimited answer, a quarter of it up to :data:`UNLIMITED_ANSWER_ROOM` (an answer that needs
    more goes on after a shift)."""
    if not context:
        return 0
    if max_new_tokens is not None and max_new_tokens >= 0:
        return min(max_new_tokens, context // 2)
    return min(context // 4, UNLIMITED_ANSWER_ROOM)


def conversation(resolved: Resolved, history: Sequence[Message], *, json_schema: Any = None
                 ) -> list[dict[str, str]]:
    """System prompt, seed messages, then the history; a system message in the history wins.

    JSON mode (or a JSON schema, from an API's ``format``) adds a short instruction to the system prompt; the
    schema itself is enforced while decoding (:mod:`hllama.engine.grammar`), not spelled out in the prompt,
    where a large one would take the context.
    """
    messages = [template_message(message) for message in [*resolved.messages, *history]]
    system = None if messages and messages[0]["role"] == "system" else resolved.system
    wanted = resolved.parameters
    instruction = JSON_INSTRUCTION if wanted.json_mode or wanted.format or json_schema else None
    if instruction:
        if system is None and messages and messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": f"{messages[0]['content']}\n\n{instruction}"}
        else:
            system = f"{system}\n\n{instruction}" if system else instruction
    return ([{"role": "system", "content": system}] if system else []) + messages


def build_prompt(tokenizer: Any, messages: list[dict[str, Any]], *, template: str | None = None,
                 ctx: int | None = None, reserve: int = 0, truncate: bool = True,
                 tools: list[dict[str, Any]] | None = None, think: bool | str | None = None, model: str = "the model",
                 processor: Any = None) -> Prompt:
    """Render and tokenize, dropping the oldest whole turns until the prompt leaves ``reserve`` tokens of
    ``ctx`` for the answer (where even the newest turn alone does not, it gets what is left); with ``truncate``
    false nothing is dropped, and a prompt that does not fit is refused.

    ``tools`` (OpenAI's function definitions, as Ollama takes them too) go to the chat template;
    ``think`` (a bool or a level) becomes its ``enable_thinking`` (and ``reasoning_effort``). Asking
    for either from a template with no place for it is refused rather than silently ignored.
    """
    chat_template = template or getattr(tokenizer, "chat_template", None)
    if tools and not supports_tools(chat_template):
        raise NotSupported(model, "tools")
    thinks = supports_thinking(chat_template)
    if think and not thinks:
        raise NotSupported(model, "thinking")
    if processor is None and any(message.get("images") for message in messages):
        raise NotSupported(model, "images", "it is not a vision model")
    options: dict[str, Any] = {}
    if thinks and think is not None:
        options["enable_thinking"] = bool(think)
        if isinstance(think, str):
            options["reasoning_effort"] = think
    fitter = _Fitter(tokenizer, processor, messages, template=template, ctx=ctx, tools=tools, options=options,
                     thinking=(think is not False) if thinks else None,
                     tool_style=tool_style(chat_template) if tools else None)
    if not truncate:
        whole = fitter.attempt(0)
        if not fitter.fits(whole, 1):
            raise fitter.too_long(0, truncating=False)
        return whole
    fitted = fitter.fewest_dropped(max(reserve, 1), 0) or fitter.fewest_dropped(1, fitter.last)
    if fitted is None:
        raise fitter.too_long(fitter.last)
    return fitter.shiftable(fitted)


class _Fitter:
    """One conversation rendered with ever more of its oldest turns left out, each rendering kept, until it fits."""

    def __init__(self, tokenizer: Any, processor: Any, messages: list[dict[str, Any]], *, template: str | None,
                 ctx: int | None, tools: list[dict[str, Any]] | None, options: dict[str, Any],
                 thinking: bool | None, tool_style: ToolStyle | None) -> None:
        self.tokenizer, self.processor, self.template, self.ctx = tokenizer, processor, template, ctx
        self.tools, self.options, self.thinking, self.tool_style = tools, options, thinking, tool_style
        self.system = messages[:1] if messages and messages[0]["role"] == "system" else []
        self.turns = _turns(messages[len(self.system):])
        self.last = max(len(self.turns) - 1, 0)
        # a vision model is prompted through its processor's chat template, where it has one
        self.renderer = processor if template is None and getattr(processor, "chat_template", None) else tokenizer
        self.pictures = _pictures(messages)  # decoded once, however many times the turns are fitted to ctx
        self.rendered: dict[int, Prompt | None] = {}  # by turns dropped: a shift later renders none of them again
        self.unfit: dict[int, int] = {}  # by turns dropped: the fewest tokens a prompt far too long to tokenize takes

    def attempt(self, dropped: int) -> Prompt | None:
        """The prompt with the oldest ``dropped`` turns left out; None where it surely does not fit ``ctx``."""
        if dropped in self.rendered:
            return self.rendered[dropped]
        kept = self.system + [message for turn in self.turns[dropped:] for message in turn]
        images = [image for message in kept for image in message.get("images") or []]
        shown = [{key: value for key, value in message.items() if key != "images"} for message in kept]
        text, extra_stops = render(self.renderer, shown, template=self.template, tools=self.tools, **self.options)
        if self.ctx is not None and (least := fewest_tokens(self.tokenizer, text)) > self.ctx:
            self.unfit[dropped], self.rendered[dropped] = least, None
            return None
        vision = None
        if images:  # the processor puts each image's tokens where its template left a place for it
            inputs = self.processor(text=[text], images=[self.pictures[id(image)] for image in images],
                                    return_tensors="pt")
            ids = inputs["input_ids"][0].tolist()
            vision = {key: value for key, value in inputs.items() if key not in ("input_ids", "attention_mask")}
        else:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        self.rendered[dropped] = Prompt(ids=ids, text=text, messages=shown, dropped_turns=dropped,
                                        extra_stops=extra_stops, thinking=self.thinking, tool_style=self.tool_style,
                                        vision=vision)
        return self.rendered[dropped]

    def fits(self, prompt: Prompt | None, room: int) -> bool:
        return prompt is not None and (self.ctx is None or len(prompt.ids) + room <= self.ctx)

    def too_long(self, dropped: int, *, truncating: bool = True) -> PromptTooLong:
        if (prompt := self.attempt(dropped)) is None:
            return PromptTooLong(self.unfit[dropped], self.ctx or 0, truncating=truncating, at_least=True)
        return PromptTooLong(len(prompt.ids) + 1, self.ctx or 0, truncating=truncating)

    def fewest_dropped(self, room: int, least: int) -> Prompt | None:
        """The prompt with the fewest turns dropped (``least`` at least) that leaves ``room`` tokens free; found
        by bisection, so a long history costs a few renders, not one per turn."""
        if least > self.last or not self.fits(newest := self.attempt(self.last), room):
            return None
        if self.fits(first := self.attempt(least), room):
            return first
        low, high, best = least + 1, self.last, newest  # ``best`` is always the attempt at ``high``
        while low < high:
            middle = (low + high) // 2
            if self.fits(candidate := self.attempt(middle), room):
                high, best = middle, candidate
            else:
                low = middle + 1
        return best

    def shiftable(self, prompt: Prompt) -> Prompt:
        """The prompt, able to give a shorter one (more turns dropped) when its answer fills the window."""
        if self.ctx is None or prompt.dropped_turns >= self.last:
            return prompt
        return replace(prompt, refit=lambda room: _then(self.shiftable,
                                                        self.fewest_dropped(room, prompt.dropped_turns + 1)))


def _then(function: Callable[[Prompt], Prompt], prompt: Prompt | None) -> Prompt | None:
    return None if prompt is None else function(prompt)


def _pictures(messages: list[dict[str, Any]]) -> dict[int, Any]:
    """Each image file of the conversation as the picture a processor takes, by the identity of its bytes."""
    if not any(message.get("images") for message in messages):
        return {}
    from hllama.images import opened

    return {id(image): opened(image) for message in messages for image in message.get("images") or []}


def render(tokenizer: Any, messages: list[dict[str, Any]], *, template: str | None = None,
           tools: list[dict[str, Any]] | None = None, **options: Any) -> tuple[str, tuple[str, ...]]:
    """The prompt text, and the stop strings the format itself needs. ``options`` go to the template.

    A ``template`` of a request or an alias renders in hllama's bounded sandbox; the model's own through
    transformers; both within a deadline.
    """
    merged = _systems_first(messages)
    try:
        text, stops = _rendered(tokenizer, messages, template=template, tools=tools, **options)
    except ChatTemplateError:
        if merged is None:
            raise
        text, stops = "", ()  # many templates refuse a system message after the first turn
    if merged is None or all(str(message["content"]).strip() in text for message in messages[1:]
                             if message["role"] == "system"):
        return text, stops
    # refused, or left out without a word: the later system messages join the system prompt, in order
    return _rendered(tokenizer, merged, template=template, tools=tools, **options)


def _systems_first(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The conversation with every system message merged, in order, into one at its start; None where no system
    message stands after the start."""
    if not any(message["role"] == "system" for message in messages[1:]):
        return None
    system = "\n\n".join(str(message["content"]) for message in messages if message["role"] == "system")
    return [{"role": "system", "content": system}, *(message for message in messages if message["role"] != "system")]


def _rendered(tokenizer: Any, messages: list[dict[str, Any]], *, template: str | None,
              tools: list[dict[str, Any]] | None, **options: Any) -> tuple[str, tuple[str, ...]]:
    import jinja2

    from hllama.engine.templates import deadline, render_bounded

    if not (template or getattr(tokenizer, "chat_template", None)):
        return plain_format(messages), FALLBACK_STOPS
    try:
        if template:
            context = {**tokenizer.special_tokens_map, "messages": messages, "tools": tools or None,
                       "add_generation_prompt": True, **options}
            return render_bounded(template, context), ()
        with deadline():
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                 tools=tools or None, **options), ()
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(str(exc.message or type(exc).__name__)) from None
    except (ArithmeticError, LookupError, TypeError, ValueError, RecursionError) as exc:  # raised by its code
        raise ChatTemplateError(f"{type(exc).__name__}: {exc}") from None


def plain_format(messages: list[dict[str, str]]) -> str:
    """For tokenizers without a chat template."""
    parts = []
    for message in messages:
        if message["role"] == "system":
            parts.append(f"{message['content']}\n\n")
        else:
            parts.append(f"{message['role'].capitalize()}: {message['content']}\n")
    return "".join(parts) + "Assistant:"


def _turns(messages: list[dict[str, str]]) -> list[list[dict[str, str]]]:
    """Each turn starts at a user message and holds the replies that follow it."""
    turns: list[list[dict[str, str]]] = []
    for message in messages:
        if message["role"] == "user" or not turns:
            turns.append([message])
        else:
            turns[-1].append(message)
    return turns
