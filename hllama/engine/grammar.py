"""Structured output: a grammar (llguidance) lets through only the tokens that keep the answer valid.

JSON mode (``format: "json"``, ``json_object``, ``--json-mode``) asks for any JSON object; a JSON schema
(``format: {...}``, ``response_format.json_schema``) for JSON that validates against it. Each request
gets its own matcher, so the rows of a batch each keep their own state; the grammar of a schema is
compiled once and cached, and the tokenizer's side of the set-up is done once per loaded model.

Where the issue of a schema is left open, the choices are Ollama's (llama.cpp's JSON-schema grammars):
an object takes no properties beyond those it lists unless ``additionalProperties`` says otherwise, and
JSON is written compactly with ``", "`` and ``": "`` between items, never with free whitespace (which a
small model may otherwise emit forever).
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

from hllama.conversation import ANY_OBJECT, Pattern
from hllama.engine.schemas import OPTIONS, closed, enforceable, enforceable_parameters
from hllama.engine.thinking import CLOSE, OPEN
from hllama.engine.tools import CLOSE as CALL_CLOSE
from hllama.engine.tools import OPEN as CALL_OPEN
from hllama.engine.tools import ToolCalls, ToolStyle
from hllama.errors import InvalidOption

log = logging.getLogger(__name__)


#: A schema with the usual parts (keys, strings, numbers): masking for it once builds a tokenizer's tables.
_WARM_UP = {"type": "object", "properties": {"text": {"type": "string"}, "number": {"type": "number"}},
            "required": ["text", "number"]}


def grammar_tokenizer(tokenizer: Any, *, vocab_size: int, eos_ids: list[int]) -> Any:
    """The tokenizer as llguidance sees it, its tables built (~3 s for a 49k vocabulary: done once, at load);
    None for a tokenizer it cannot read (such a model answers structured requests with a clear error)."""
    ends = [token for token in eos_ids if 0 <= token < vocab_size] or None  # else the tokenizer's own
    try:
        import llguidance.hf
        from llguidance import LLMatcher

        prepared = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=ends)
        # the first mask of a tokenizer builds its lookup tables (a second at a 49k vocabulary): now, not in a request
        _fill(LLMatcher(prepared, LLMatcher.grammar_from_json_schema(_WARM_UP, defaults=OPTIONS)),
              _bitmask(vocab_size))
        _vocabulary(prepared)  # one pass over the tokens, now rather than in a request
        return prepared
    except Exception as exc:  # a slow (Python) tokenizer, an unusual vocabulary
        log.warning("structured output is unavailable for this tokenizer: %s", exc)
        return None


#: What an answer may be held to: a JSON schema, a pattern, or the calls of the request's tools.
Structure = dict[str, Any] | Pattern | ToolCalls


def structure_of(parameters: Any, structure: Structure | None = None, calls: ToolCalls | None = None
                 ) -> Structure | None:
    """What an answer must follow: the request's structure, else calls it requires, else its settings' ``format``
    (a schema, or ``"json"``) or JSON mode (any object), else the shape of any call the model makes, else nothing.
    A required call and a structure for the whole answer cannot both be had."""
    if isinstance(structure, (dict, Pattern)):
        if calls is not None and not calls.lazy:
            raise InvalidOption("tool_choice: a required tool call cannot be combined with a response format")
        return structure
    if calls is not None and not calls.lazy:
        return calls
    wanted = getattr(parameters, "format", None)
    if isinstance(wanted, dict):
        return wanted
    return ANY_OBJECT if wanted == "json" or getattr(parameters, "json_mode", None) else calls


def thinking_mode(prompt: Any) -> ThinkingMode:
    """How a prompt's answer may think before its grammar applies."""
    from hllama.engine.thinking import opens_thinking

    if not getattr(prompt, "thinking", None):  # a model that does not think, one told not to, or a raw prompt
        return "no"
    return "open" if opens_thinking(prompt.text) else "maybe"


def grammar_for(structure: Structure, tokenizer: Any) -> str:
    """The compiled grammar of a JSON schema or a pattern; one that cannot be enforced is an
    :class:`InvalidOption` naming what it cannot do."""
    if tokenizer is None:
        raise InvalidOption("format: this model's tokenizer cannot be constrained to a grammar")
    if isinstance(structure, Pattern):
        return _compiled_pattern(structure)
    if isinstance(structure, ToolCalls):
        return _compiled_calls(structure)
    schema = structure
    try:
        text = json.dumps(schema, ensure_ascii=False)  # as it came: the order of its properties is kept
    except (TypeError, ValueError):
        raise InvalidOption("format: the JSON schema is not JSON") from None
    return _compiled(text)


@functools.lru_cache(maxsize=256)  # by text alone: a grammar does not depend on the model
def _compiled(schema_text: str) -> str:
    from llguidance import LLMatcher

    try:
        grammar = LLMatcher.grammar_from_json_schema(closed(json.loads(schema_text)), defaults=OPTIONS)
    except ValueError as exc:
        raise InvalidOption(f"format: not a JSON schema: {exc}") from None
    return enforceable(grammar, "format: this JSON schema")


@functools.lru_cache(maxsize=256)
def _compiled_pattern(pattern: Pattern) -> str:
    from llguidance import LLMatcher
    from llguidance.gbnf_to_lark import gbnf_to_lark

    try:
        if pattern.kind == "regex":
            grammar = LLMatcher.grammar_from_regex(pattern.text)
        elif pattern.kind == "choice":
            lark = "start: " + " | ".join(json.dumps(choice, ensure_ascii=False) for choice in json.loads(pattern.text))
            grammar = LLMatcher.grammar_from_lark(lark)
        else:
            lark = gbnf_to_lark(pattern.text) if "::=" in pattern.text else pattern.text
            grammar = LLMatcher.grammar_from_lark(lark)
    except Exception as exc:  # a GBNF grammar the converter cannot read
        raise InvalidOption(f"structured_outputs.{pattern.kind}: {str(exc).strip().splitlines()[0]}") from None
    return enforceable(grammar, f"structured_outputs.{pattern.kind}")


@functools.lru_cache(maxsize=64)
def _compiled_calls(calls: ToolCalls) -> str:
    """The grammar of a request's tool calls, in the model's own format, each call's arguments held to its tool's
    ``parameters``. A lazy tagged grammar covers one call, from just after ``<tool_call>`` to its ``</tool_call>``
    (it starts again at the next call); a lazy bare-JSON one covers the whole answer once it opens with JSON."""
    from llguidance import LLMatcher

    key = calls.arguments_key
    rules = []
    for index, (name, parameters) in enumerate(calls.functions):
        arguments = json.loads(enforceable_parameters(name, json.dumps(parameters, ensure_ascii=False)))
        schema = {"type": "object", "properties": {"name": {"const": name}, key: arguments},
                  "required": ["name", key], "additionalProperties": False, "x-guidance": OPTIONS}
        rules.append(f"tool{index}: %json {json.dumps(schema, ensure_ascii=False)}")
    one = not calls.lazy and calls.choice != "required"  # a named tool: exactly one call
    if calls.style == "tagged":
        block = f'"\\n"? call "\\n"? {json.dumps(CALL_CLOSE)}'
        opened = f"{json.dumps(CALL_OPEN)} {block}"
        start = block if calls.lazy else opened if one else f'{opened} ("\\n"? {opened})*'
    else:
        # a lazy grammar begins at the token that opens the JSON, which may carry a little whitespace before it
        calls_text = "call" if one else '(call | "[" call (", " call)* "]")'
        start = ("/[ \\t\\r\\n]{0,4}/ " if calls.lazy else "") + calls_text
    lark = "\n".join([f"start: {start}", "call: " + " | ".join(f"tool{index}" for index in range(len(rules))),
                      *rules])
    try:
        grammar = LLMatcher.grammar_from_lark(lark)
    except Exception as exc:
        raise InvalidOption(f"tools: {str(exc).strip().splitlines()[0]}") from None
    return enforceable(grammar, "tools: a tool's parameters")


def constraint_for(structure: Structure, tokenizer: Any, *, thinking: ThinkingMode = "no",
                   budget: int | None = None) -> Constraint | None:
    """One answer's constraint (``budget``: the most tokens it may take); None for tool calls whose tools cannot
    all be enforced, which a model may then write freely as before (a call it is required to make is refused
    instead: :func:`grammar_for` says why)."""
    lazy = isinstance(structure, ToolCalls) and structure.lazy
    try:
        grammar = grammar_for(structure, tokenizer)
    except InvalidOption as exc:
        if not lazy:
            raise
        log.warning("tool calls left unconstrained: %s", exc)
        return None
    return Constraint(tokenizer, grammar, thinking=thinking, budget=budget,
                      trigger=structure.style if lazy else None)  # type: ignore[union-attr]


#: Whether an answer may think before the grammar applies: "no" (it applies from the first token), "open"
#: (the prompt opened a think block: it applies after ``</think>``), "maybe" (it applies after a think block
#: the answer opens, else from the first token).
ThinkingMode = Literal["no", "open", "maybe"]


class Constraint:
    """One answer's grammar state: which tokens may come next, and each token the answer took.

    A thinking model thinks freely first; the grammar takes over where its thinking ends, as vLLM does. A lazy
    grammar (the calls of ``tool_choice: "auto"``, ``trigger`` their style) waits further, for the model to open a
    call: after ``<tool_call>`` (and again after each call closes), or at an answer that opens with JSON.

    An answer with a ``budget`` (its token limit) finishes within it: once the tokens left only just cover the
    shortest way to complete the grammar, the answer closes what it has open (see :meth:`_closing`). A small
    model caught repeating itself inside a string then still gives JSON that validates, not a cut one.
    """

    def __init__(self, tokenizer: Any, grammar: str, *, thinking: ThinkingMode = "no",
                 trigger: ToolStyle | None = None, budget: int | None = None) -> None:
        from llguidance import LLMatcher

        self.matcher = LLMatcher(tokenizer, grammar)
        self.tokenizer = tokenizer
        self.eos_ids = list(tokenizer.eos_tokens)
        self._bitmask = _bitmask(tokenizer.vocab_size)
        self._vocabulary = _vocabulary(tokenizer)
        self._budget = budget
        self._taken = 0  # tokens of the answer so far, thinking and prose included
        self._close: Literal["watching", "closing", "off"] = "watching"
        self._thinking = thinking
        self._trigger = trigger
        self._armed = thinking == "no" and trigger is None
        self._free: list[int] = []  # the tokens since the grammar could last have begun
        self._passed = False  # a lazy bare-JSON grammar whose answer began as prose: nothing left to hold

    def mask(self, scores: Any) -> None:
        """Set every token the grammar does not allow next to ``-inf`` in ``scores`` (``[vocab]``, in place)."""
        if not self._armed:
            if self._thinking == "maybe" and self._trigger is None:  # a think block, or JSON from the first token
                self._mask_undecided(scores)
            return
        if self.matcher.is_error():  # cannot happen through mask and accept alone; end the answer if it does
            log.warning("structured output stopped: %s", self.matcher.get_error())
            keep = scores[self.eos_ids].clone()
            scores.fill_(float("-inf"))
            scores[self.eos_ids] = keep
            return
        _fill(self.matcher, self._bitmask)
        if self._closing():
            self._vocabulary.narrow(self._bitmask)
        _apply(scores, self._bitmask)

    def _closing(self) -> bool:
        """Whether the answer must close now: the grammar's shortest way to an end (estimated by following
        :meth:`_Vocabulary.narrow` on a copy of the matcher) needs about the tokens left. Checked in the last
        :data:`CLOSING_WINDOW` tokens only; once closing, always closing, and an answer that cannot close in
        time even so (a ``minLength`` far from met) is left as the model writes it, to end cut. Closing begins
        :data:`CLOSING_SLACK` tokens before it must."""
        if self._close != "watching" or self._budget is None:
            return self._close == "closing"
        left = self._budget - self._taken - 1  # the end token takes one
        if left <= CLOSING_WINDOW:
            steps = self._steps_to_end(limit=left + 1)
            self._close = "off" if steps > left else "closing" if steps >= left - 1 - CLOSING_SLACK else "watching"
        return self._close == "closing"

    def _steps_to_end(self, *, limit: int) -> int:
        """How many tokens closing from here takes (``limit`` when it takes that many or more)."""
        matcher, bitmask = self.matcher.deep_copy(), _bitmask(self.tokenizer.vocab_size)
        for steps in range(limit):
            if matcher.is_accepting() or matcher.is_stopped() or matcher.is_error():
                return steps
            _fill(matcher, bitmask)
            self._vocabulary.narrow(bitmask)
            matcher.consume_token(_first_allowed(bitmask))
        return limit

    def accept(self, token: int) -> None:
        self._taken += 1
        if self._armed:
            self.matcher.consume_token(token)
            if self._trigger == "tagged" and self.matcher.is_stopped():  # the call closed: prose until the next
                self.matcher.reset()
                self._armed, self._free = False, []
            return
        if self._passed:
            return
        self._free.append(token)
        if self._thinking == "maybe":
            begun = self.tokenizer.decode_str(self._free).lstrip()
            if begun.startswith(OPEN):
                self._thinking = "open"
            elif not OPEN.startswith(begun):  # no think block: the answer began with this token
                self._thinking = "no"
        if self._thinking == "open" and CLOSE in self.tokenizer.decode_str(self._free[-_WINDOW:]):
            self._thinking, self._free = "no", []
            self._armed = self._trigger is None
        elif self._thinking == "no":
            self._await_call()

    def _await_call(self) -> None:
        """Arm the grammar where the answer (or, lazily, a call) begins, giving it the tokens that began it."""
        if self._trigger == "tagged":
            text = self.tokenizer.decode_str(self._free[-_WINDOW:])
            if (at := text.rfind(CALL_OPEN)) < 0:
                return
            # the token that finished the opener may carry the call's first characters too ('>{"'): the grammar
            # is given those as they tokenize on their own (it follows bytes, however they are split)
            self._free = self.tokenizer.tokenize_str(text[at + len(CALL_OPEN):].lstrip())
        if self._trigger == "json":
            begun = self.tokenizer.decode_str(self._free).lstrip()
            if not begun:
                return
            if not begun.startswith(("{", "[")):
                self._passed = True
                return
            while not self.tokenizer.decode_str(self._free[:1]).strip():  # whitespace the grammar need not see
                self._free.pop(0)
        self._armed = True
        if not all(self.matcher.consume_token(token) for token in self._free):  # JSON the grammar cannot continue
            log.debug("a call began in a way its grammar cannot follow; left unconstrained")
            self.matcher.reset()
            self._armed, self._passed = False, True
        self._free = []

    def _mask_undecided(self, scores: Any) -> None:
        """Before an answer shows whether it thinks: tokens that continue ``<think>``, and (while nothing but
        whitespace came) those that may begin the JSON."""
        begun = self.tokenizer.decode_str(self._free)
        opening = [token for token in self._vocabulary.think_pieces
                   if (text := (begun + self.tokenizer.decode_str([token])).lstrip())
                   and OPEN.startswith(text[:len(OPEN)])]
        kept = scores[opening].clone() if opening else None
        if begun.strip():  # inside "<think" already: only its continuation
            scores.fill_(float("-inf"))
        else:
            _fill(self.matcher, self._bitmask)
            _apply(scores, self._bitmask)
        if kept is not None:
            scores[opening] = kept


def _bitmask(vocab_size: int) -> Any:
    """Room for one mask: bit ``i % 32`` of word ``i // 32`` allows token ``i`` (on the CPU, where it is filled)."""
    import torch

    return torch.zeros((vocab_size + 31) // 32, dtype=torch.int32)


def _fill(matcher: Any, bitmask: Any) -> None:
    """The tokens ``matcher`` allows next, into ``bitmask`` (llguidance writes it in place)."""
    matcher.unsafe_compute_mask_ptr(bitmask.data_ptr(), bitmask.numel() * bitmask.element_size())


def _apply(scores: Any, bitmask: Any) -> None:
    """``-inf`` for every token whose bit is clear in ``bitmask``. Plain tensor operations: llguidance's own
    helpers are TorchScript, whose first call compiles for over a second."""
    import torch

    words = bitmask.to(scores.device)
    bits = (words[:, None] >> torch.arange(32, device=scores.device, dtype=words.dtype)) & 1
    allowed = bits.flatten()[:scores.shape[-1]].bool()
    scores.masked_fill_(~allowed, float("-inf"))


#: How near its token limit an answer starts checking whether it must close.
CLOSING_WINDOW = 64

#: How many tokens early closing begins: one token may open more than it closes (', "' begins another item, which
#: then needs its quotes and brackets too), so an answer that waited until the shortest way out took all the
#: tokens left could be pushed past them by its next token.
CLOSING_SLACK = 8

_CLOSERS = frozenset('"]}')
_PUNCTUATION = frozenset('"]}[{,: ')


@dataclass(frozen=True)
class _Vocabulary:
    """What constraints need to know of a tokenizer's tokens, found in one pass (at load)."""

    think_pieces: tuple[int, ...]  # the tokens that can be part of ``<think>``
    closing: tuple[Any, ...]  # bitmasks of the tokens that close, the likeliest to close soonest first

    def narrow(self, bitmask: Any) -> None:
        """Keep, of the tokens ``bitmask`` allows, those of the first kind that any is of: a quote with only
        ``]`` and ``}`` after it (ending a string, or beginning an empty one), else only ``]`` and ``}``, else
        JSON punctuation; else all (a key, an enum value or a digit the grammar requires)."""
        for kind in self.closing:
            narrowed = bitmask & kind
            if bool(narrowed.any()):
                bitmask.copy_(narrowed)
                return


@functools.lru_cache(maxsize=8)
def _vocabulary(tokenizer: Any) -> _Vocabulary:
    texts = [tokenizer.decode_str([token]) for token in range(tokenizer.vocab_size)]
    kinds = (lambda text: text[0] == '"' and set(text[1:]) <= _CLOSERS - {'"'},
             lambda text: set(text) <= _CLOSERS - {'"'},
             lambda text: set(text) <= _PUNCTUATION)
    return _Vocabulary(
        think_pieces=tuple(token for token, text in enumerate(texts) if (piece := text.strip()) and piece in OPEN),
        closing=tuple(_packed([bool(text) and kind(text) for text in texts]) for kind in kinds))


def _packed(allowed: list[bool]) -> Any:
    """A bitmask (see :func:`_bitmask`) allowing the tokens marked True. Packed in Python: a torch operation this
    large on the loading thread starts a thread pool of its own there, which slows the model's threads after."""
    import torch

    words = [0] * ((len(allowed) + 31) // 32)
    for token in (token for token, yes in enumerate(allowed) if yes):
        words[token // 32] |= 1 << (token % 32)
    return torch.tensor([word - (1 << 32) if word >= 1 << 31 else word for word in words], dtype=torch.int32)


def _first_allowed(bitmask: Any) -> int:
    """The lowest token ``bitmask`` allows."""
    word = int(bitmask.nonzero()[0, 0])
    value = int(bitmask[word]) & 0xFFFFFFFF
    return word * 32 + (value & -value).bit_length() - 1


#: Tokens looked at for the end of a think block (``</think>`` is at most a few tokens).
_WINDOW = 16  # tokens: enough to hold </think> or <tool_call> however it is split
