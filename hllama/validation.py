"""Turn pydantic's complaints into short messages a person can act on."""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import AfterValidator, AliasChoices, BaseModel, ValidationError

KeyPath = tuple[str | int, ...]


def field_name(loc: KeyPath) -> str:
    """``('messages', 1, 'role')`` -> ``messages[1].role``."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


def first_problem(exc: ValidationError, *, schema: type[BaseModel]) -> tuple[str, str]:
    """(the innermost key named, what is wrong with it) for the first error: how flags and API options say it."""
    error = exc.errors()[0]
    key = next((str(part) for part in reversed(error["loc"]) if isinstance(part, str)), "")
    return key, describe(error, schema=schema)


def request_problem(exc: ValidationError, *, schema: type[BaseModel]) -> tuple[str, str]:
    """(the field, what is wrong with it) for the first error of a request body.

    A value that fits none of a field's types fails once per type, each under a location that ends in
    the type's name (``think.bool``); those are one problem of the field, saying what each type wanted.
    """
    errors = exc.errors()
    field = _without_type_name(tuple(errors[0]["loc"]), schema)
    wanted = [error for error in errors if _without_type_name(tuple(error["loc"]), schema) == field]
    phrases = [describe({**error, "input": None}, schema=schema).removesuffix(" (got None)") for error in wanted]
    got = describe(errors[0], schema=schema).removeprefix(phrases[0])
    return field_name(field), " or ".join(dict.fromkeys(phrases)) + got


def _without_type_name(loc: KeyPath, schema: type[BaseModel]) -> KeyPath:
    """``('think', 'bool')`` -> ``('think',)``: pydantic names the member of a union that failed."""
    if len(loc) > 1 and isinstance(loc[-1], str) and loc[-1] not in known_keys(schema, loc[:-1]):
        return loc[:-1]
    return loc


def describe(error: dict[str, Any], *, schema: type[BaseModel], data: Any = None,
             synonyms: dict[str, str] | None = None, echo_text: bool = True) -> str:
    """One error of a ``ValidationError`` as a phrase; unknown keys get a "did you mean".

    ``echo_text=False`` leaves out a text value it quotes (a file's content may be a secret); numbers stay."""
    loc: KeyPath = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        synonym = (synonyms or {}).get(key)
        if synonym and synonym in _keys_at(data, loc[:-1]):
            return f"'{key}' and '{synonym}' are the same setting; give only one"
        return "unknown key" + did_you_mean(key, known_keys(schema, loc[:-1]))
    if kind == "missing":
        return "required but missing"
    message = error["msg"].removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    if "input" in error and not isinstance(error["input"], (dict, list)) and \
            (echo_text or not isinstance(error["input"], str)):
        got = repr(error["input"])
        message += f" (got {got if len(got) <= 60 else got[:57] + '...'})"
    return message


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)``, naming the one of ``choices`` closest to a mistyped ``word``, or ``""`` when none
    is close: the one suggester of keys, parameters, flags, commands and model names."""
    close = difflib.get_close_matches(word, list(dict.fromkeys(choices)), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def known_keys(schema: type[BaseModel], section: KeyPath) -> list[str]:
    """Every key (names and accepted spellings) of the model found at ``section`` inside ``schema``."""
    model = _model_at(schema, section)
    if model is None:
        return []
    keys = []
    for name, info in model.model_fields.items():
        keys.append(info.alias or name)
        if isinstance(info.validation_alias, AliasChoices):
            keys.extend(str(choice) for choice in info.validation_alias.choices)
    return list(dict.fromkeys(keys))


def _model_at(model: type[BaseModel] | None, section: KeyPath) -> type[BaseModel] | None:
    for part in section:
        if model is None or isinstance(part, int):
            continue
        info = next((info for name, info in model.model_fields.items() if part in (name, info.alias)), None)
        model = _inner_model(info.annotation) if info else None
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if found := _inner_model(arg):
            return found
    return None


def _keys_at(data: Any, section: KeyPath) -> set[str]:
    for part in section:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return set()
    return set(data) if isinstance(data, dict) else set()


def has_lone_surrogate(text: str) -> bool:
    """True when ``text`` holds a lone UTF-16 surrogate, which no UTF-8 file or tokenizer can hold."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _unicode_text(value: str) -> str:
    if has_lone_surrogate(value):
        raise ValueError("not Unicode text: it holds a lone surrogate (such as \\ud800)")
    return value


#: A string that can be written to a UTF-8 file: every string a modelfile keeps is one.
Text = Annotated[str, AfterValidator(_unicode_text)]
