"""Chat templates that cannot run away: bounded in time, in output and in what one expression may build.

A model's own template comes with the model the user chose; a ``template`` in a request or an alias
is anyone's. Both run in Jinja's sandbox (no file or attribute access), but the sandbox bounds neither
time (``{% for a in range(600) %}`` three deep) nor memory (``'x' * 10**8``). Here every render has a
deadline, and a template given by a request or an alias renders in :class:`BoundedEnvironment`, which
also refuses an expression that would build too large a value and stops output past a size.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache
from typing import Any, TypeVar

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from hllama.errors import ChatTemplateError

T = TypeVar("T")

#: How long one render may take; real templates take milliseconds.
RENDER_SECONDS = 2.0

#: The most text a render may produce, or one expression build (far beyond any model's context).
MAX_OUTPUT_CHARS = 32 * 1024 * 1024

#: Jinja compiles templates to Python code with this file name: the frames the deadline watches.
_TEMPLATE_FILE = "<template>"


class RenderTimeout(Exception):
    """Raised inside a template's frame when its deadline passes."""


@contextmanager
def deadline(seconds: float = RENDER_SECONDS) -> Iterator[None]:
    """Stop any Jinja template running in this thread after ``seconds`` (a :class:`ChatTemplateError`).

    Only template frames are traced (a check of the clock on each line and each turn of a loop); the
    library code around them runs untraced.
    """
    ends = time.monotonic() + seconds

    def in_template(frame: Any, event: str, arg: Any) -> Any:
        if time.monotonic() > ends:
            raise RenderTimeout
        return in_template

    def calls(frame: Any, event: str, arg: Any) -> Any:
        return in_template if frame.f_code.co_filename == _TEMPLATE_FILE else None

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        yield
    except RenderTimeout:
        raise ChatTemplateError(f"rendering took longer than {seconds:g} s") from None
    finally:
        sys.settrace(previous)


def render_bounded(template: str, context: dict[str, Any]) -> str:
    """``template`` (a request's or an alias's) rendered with ``context``, within every bound."""
    compiled = _compile(template)
    pieces: list[str] = []
    size = 0
    with deadline():
        for piece in compiled.generate(**context):
            size += len(piece)
            if size > MAX_OUTPUT_CHARS:
                raise ChatTemplateError(f"the output is larger than {MAX_OUTPUT_CHARS} characters")
            pieces.append(piece)
    return "".join(pieces)


class _GenerationTag(Extension):
    """``{% generation %}...{% endgeneration %}`` marks what the assistant wrote (for training masks): here,
    its content is simply rendered."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Callable[[], str]) -> str:
        return caller()


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox chat templates run in (as transformers sets it up), with ``*``, ``**`` and ``+`` checked
    before they build a value: a string, list or number too large for any prompt is refused."""

    intercepted_binops = frozenset({"*", "**", "+"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > 64:
            raise ChatTemplateError("an exponent larger than 64")
        if operator == "*":
            for sequence, count in ((left, right), (right, left)):
                if isinstance(sequence, (str, list, tuple)) and isinstance(count, int) and \
                        len(sequence) * count > MAX_OUTPUT_CHARS:
                    raise ChatTemplateError("an expression that builds too large a value")
        if operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, type(left)) and \
                len(left) + len(right) > MAX_OUTPUT_CHARS:
            raise ChatTemplateError("an expression that builds too large a value")
        return super().call_binop(context, operator, left, right)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    """Chat templates' ``tojson``: plain JSON, not Jinja's HTML-escaped kind."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=64)
def _compile(template: str) -> jinja2.Template:
    """Compiled once per distinct template (an alias's is used by every one of its requests)."""
    environment = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols])
    environment.filters["tojson"] = _tojson
    environment.globals.update(raise_exception=_raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        return environment.from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"line {exc.lineno}: {exc.message}") from None
