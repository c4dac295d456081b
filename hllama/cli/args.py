"""Argument builders shared by every command that takes model settings.

The generation flags are derived from the ``Parameters`` schema, so a new parameter is a new flag
with no code here, and every value is checked by the same validators as a modelfile's.
"""

from __future__ import annotations

import argparse
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from hllama.aliases.resolve import Overrides
from hllama.errors import InvalidOption
from hllama.options import SYNONYMS, Parameters
from hllama.validation import first_problem

_OLLAMA_FLAGS = {canonical: synonym for synonym, canonical in SYNONYMS.items()}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--system", metavar="TEXT", help="system prompt")
    for name, info in Parameters.model_fields.items():
        flags = [_flag(name)] + ([_flag(_OLLAMA_FLAGS[name])] if name in _OLLAMA_FLAGS else [])
        kind = typing.get_args(info.annotation)[0] if typing.get_args(info.annotation) else info.annotation
        options: dict[str, Any] = {"dest": f"param_{name}", "help": info.description}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is list:
            options.update(action="append", metavar="TEXT")
            options["help"] += " (repeat for several)"
        else:
            options["metavar"] = "N" if kind is int else "X"
        group.add_argument(*flags, **options)


def add_load_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("loading")
    precision = group.add_mutually_exclusive_group()
    precision.add_argument("--load-in-8bit", dest="load_quantize", action="store_const", const="8bit",
                           help="quantize the weights to 8 bits with bitsandbytes")
    precision.add_argument("--load-in-4bit", dest="load_quantize", action="store_const", const="4bit",
                           help="quantize the weights to 4 bits (nf4) with bitsandbytes")
    precision.add_argument("--quantize", dest="load_quantize", choices=["none", "8bit", "4bit", "auto"],
                           help="precision; auto picks the best one that fits in memory")
    group.add_argument("--dtype", dest="load_dtype", choices=["auto", "float32", "float16", "bfloat16"],
                       help="weight dtype (auto: the checkpoint's, where the hardware runs it; else float32 on a CPU)")
    group.add_argument("--device-map", dest="load_device_map", metavar="MAP", help="accelerate device map")
    group.add_argument("--trust-remote-code", dest="load_trust_remote_code", action="store_const", const=True,
                       help="allow code shipped with the model to run")


def overrides_from_args(args: argparse.Namespace) -> Overrides:
    """The settings given as flags; flags not given stay unset and override nothing."""
    values = dict(vars(args))
    if values.get("param_format") is not None:
        values["param_format"] = _format_text(values["param_format"])
    data = {
        "system": values.get("system"),
        "parameters": _given(values, "param_"),
        "load": _given(values, "load_"),
    }
    try:
        return Overrides.model_validate(data)
    except ValidationError as exc:
        raise invalid_option(exc, schema=Overrides) from None


def _format_text(value: str) -> str:
    """``--format``: ``json``, a JSON schema as text, or a file holding one."""
    from pathlib import Path

    from hllama.options import MAX_SCHEMA_BYTES

    if value.strip() == "json" or value.lstrip().startswith("{"):
        return value
    try:
        with Path(value).expanduser().open("rb") as handle:
            data = handle.read(MAX_SCHEMA_BYTES + 1)
    except OSError as exc:
        raise InvalidOption(f"--format: use json, a JSON schema, or a file holding one ({value}: "
                            f"{exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidOption(f"--format: {value} is not UTF-8 text") from None


def invalid_option(exc: ValidationError, *, schema: type[BaseModel]) -> InvalidOption:
    """The first complaint about flag values, named by its flag."""
    key, problem = first_problem(exc, schema=schema)
    return InvalidOption(f"{'--model' if key == 'from' else _flag(key)}: {problem}")


def _given(values: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {key.removeprefix(prefix): value for key, value in values.items()
            if key.startswith(prefix) and value is not None}
