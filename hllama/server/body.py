"""Request bodies: read as strict, bounded JSON and checked by a route's pydantic model.

Every JSON route of both APIs reads its body here, so whatever a client sends (a web page's form
post, a lone surrogate, ten thousand levels of nesting, ``NaN``) is refused the same way, with a
400 or 415 in the route's own error shape, before any of it reaches the store or a model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hllama.errors import InvalidOption, UnsupportedMediaType
from hllama.runtime.requestlog import current_client
from hllama.validation import has_lone_surrogate, request_problem

M = TypeVar("M", bound=BaseModel)

#: Deeper than any real request (a JSON schema in ``format`` or ``tools`` included).
MAX_DEPTH = 64

#: Types a browser may send cross-origin without asking first. From a web page (its request names its
#: ``Origin``) they are never taken for JSON. Without one, plain text is read as JSON, as tools send it (Node's
#: ``fetch`` without a content type, aiohttp's ``data=``); so is a form-urlencoded body, as ``curl -d`` labels JSON.
_FROM_PAGES_ONLY = ("text/plain",)
_NEVER_JSON = ("multipart/form-data",)


async def read_body(request: Request, model: type[M]) -> M:
    """The request's body as ``model``, or the reason it is refused."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type.startswith(_NEVER_JSON) or (content_type.startswith(_FROM_PAGES_ONLY) and
                                               "origin" in request.headers):
        raise UnsupportedMediaType(f"the request body must be JSON (Content-Type: application/json), "
                                   f"not {content_type}")
    body = parse_body(model, await request.body())
    if isinstance(named := getattr(body, "model", None), str):
        request.state.model = named[:200]  # for the metrics of a request that succeeds (hllama.runtime.metrics)
    current_client.set(request.client.host if request.client else "")  # for the request log
    return body


def required(*names: str, either: tuple[str, str] | None = None) -> Callable[[dict[str, Any]], None]:
    """A request model's ``json_schema_extra``: the fields its route refuses a request without, marked required
    in the OpenAPI document (they have defaults, so that the route says what is missing in its own words);
    ``either``: two spellings of one field, one of which must be there (``model``, or Ollama's older ``name``)."""
    def mark(schema: dict[str, Any]) -> None:
        schema["required"] = sorted({*schema.get("required", []), *names})
        if either:
            schema["anyOf"] = [{"required": [either[0]]}, {"required": [either[1]]}]

    return mark


class Reply(BaseModel):
    """A response body. Routes hand :meth:`wire` to their response: plain data that ``json.dumps`` writes, so
    numbers look as Python writes them, the same in every API."""

    def wire(self) -> dict[str, Any]:
        return self.model_dump()


def named(model: str) -> str:
    """The model a request names; a request that names none is refused (400)."""
    if not model:
        raise InvalidOption("model is required")
    return model


def reply(body: Reply, **response: Any) -> JSONResponse:
    """A response body as a JSON response (``response``: its status code, headers)."""
    return JSONResponse(body.wire(), **response)


def replies(model: type[BaseModel], *, streamed: str | None = None) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses`` for OpenAPI: its body's model, and the media type it streams in, if it does."""
    described: dict[str, Any] = {"model": model, "description": model.__doc__ or "the answer"}
    if streamed:
        described["description"] += f" Streamed (the default), each object is one line or event of {streamed}."
        described["content"] = {streamed: {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
    return {200: described}


def _absent(value: Any) -> bool:
    return value is None


def omitted(description: str) -> Any:
    """A response field left out when it has no value (None), as Go's ``omitempty`` leaves it out."""
    return Field(None, description=description, exclude_if=_absent)


class Lenient(BaseModel):
    """The base of every API's request shapes: fields a client sends that hllama does not read are ignored (as the
    APIs' own servers ignore what they do not know), and a field with an alias takes its own name too."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


def parse_body(model: type[M], raw: bytes) -> M:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidOption("invalid JSON: the request body is not UTF-8 text") from None
    if not text.strip():
        raise InvalidOption("missing request body")
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise InvalidOption(f"invalid JSON: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:
        raise InvalidOption(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidOption("the request body must be a JSON object")
    check_json_value(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        where, problem = request_problem(exc, schema=model)
        raise InvalidOption(f"invalid {where}: {problem}") from None


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """A route's ``openapi_extra``: its JSON body, described by ``model`` (the route reads it with :func:`read_body`).

    Nested models are referred to as components; :func:`hoist_schemas` moves them there.
    """
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def hoist_schemas(document: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI document with each body schema's nested ``$defs`` moved to ``components.schemas``."""
    components = document.setdefault("components", {}).setdefault("schemas", {})
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if isinstance(schema, dict):
                components.update(schema.pop("$defs", {}))
    return document


#: What each error status means, for the OpenAPI document.
ERROR_STATUSES = {
    "400": "the request is invalid: the message says which field and why",
    "401": "the server has an API key, and the request does not carry it",
    "403": "a web page of another origin, or a Host that is not this machine",
    "404": "no such model or alias (or route)",
    "413": "the body is larger than max_request_size",
    "415": "the body is not JSON",
    "500": "the model cannot be loaded here (too large for memory, say), or an unexpected error",
    "503": "the server is busy: too many requests wait for this model",
}


def document_errors(document: dict[str, Any], shapes: list[tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
    """Every operation of ``document`` with the error answers it may give, each in its API's shape: ``shapes``
    holds (path prefix, schema name, schema), the first prefix a path starts with winning. FastAPI's 422 goes:
    hllama answers an invalid request with 400."""
    components = document.setdefault("components", {}).setdefault("schemas", {})
    for _, name, schema in shapes:
        components.update(schema.pop("$defs", {}))
        components[name] = schema
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path, operations in document.get("paths", {}).items():
        name = next(name for prefix, name, _ in shapes if path.startswith(prefix))
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, meaning in ERROR_STATUSES.items():
                responses.setdefault(status, {"description": meaning, "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}})
    return document


def check_json_value(data: Any) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` and text that is not Unicode (a lone surrogate).

    A lone surrogate (``"\\ud800"``) is valid JSON but no UTF-8 file, header or tokenizer can hold it.
    """
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidOption(f"invalid JSON: nested more than {MAX_DEPTH} levels deep")
        items = [*value, *value.values()] if isinstance(value, dict) else value
        for item in items:
            if isinstance(item, str):
                if has_lone_surrogate(item):
                    raise InvalidOption("invalid text: a lone UTF-16 surrogate (such as \\ud800) is not a character")
            elif isinstance(item, (dict, list)):
                stack.append((item, depth + 1))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value
