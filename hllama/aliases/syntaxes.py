"""The three spellings of a modelfile, each read into plain data and a map from key paths to line numbers: YAML,
TOML and Ollama's Modelfile syntax. The schema that validates them all is :class:`~hllama.aliases.modelfile.
Modelfile`; adding a format means writing one parser here."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any

from hllama.errors import ModelfileError, UnsupportedInstruction
from hllama.validation import KeyPath

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class Parsed:
    """Plain data from a parser, with the line each key path was written on."""

    data: dict[str, Any]
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def line_of(self, loc: KeyPath) -> int | None:
        """The line of ``loc`` or of its nearest written ancestor."""
        for end in range(len(loc), 0, -1):
            if (line := self.lines.get(tuple(loc[:end]))) is not None:
                return line
        return None


def _parse_yaml(text: str) -> Parsed:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        document = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise ModelfileError(f"invalid YAML: {problem}", line=mark.line + 1 if mark else None) from None
    except YAMLError as exc:
        raise ModelfileError(f"invalid YAML: {exc}") from None
    if document is None:
        raise ModelfileError("the file is empty")
    if not isinstance(document, dict):
        raise ModelfileError("expected a mapping of keys (name, from, parameters, ...)", line=1)
    lines: dict[KeyPath, int] = {}
    return Parsed(_plain_yaml(document, (), lines), lines)


def _plain_yaml(node: Any, path: KeyPath, lines: dict[KeyPath, int]) -> Any:
    """ruamel's round-trip nodes as plain Python values, recording each key's line on the way."""
    if isinstance(node, dict):
        plain = {}
        for key, value in node.items():
            lines[(*path, str(key))] = node.lc.key(key)[0] + 1
            plain[str(key)] = _plain_yaml(value, (*path, str(key)), lines)
        return plain
    if isinstance(node, list):
        for index in range(len(node)):
            lines[(*path, index)] = node.lc.item(index)[0] + 1
        return [_plain_yaml(value, (*path, index), lines) for index, value in enumerate(node)]
    if isinstance(node, bool) or node is None:
        return node
    for plain_type in (str, int, float):
        if isinstance(node, plain_type):
            return plain_type(node)
    return node


_TOML_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")


_TOML_KEY = re.compile(r"^\s*([A-Za-z0-9_.\"' -]+?)\s*=")


_TOML_ERROR_LINE = re.compile(r"at line (\d+)")


def _parse_toml(text: str) -> Parsed:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_ERROR_LINE.search(str(exc))
        message = _TOML_ERROR_LINE.sub("", str(exc)).replace("(, column", "(column").strip()
        raise ModelfileError(f"invalid TOML: {message}", line=int(found.group(1)) if found else None) from None
    return Parsed(data, _toml_lines(text))


def _toml_lines(text: str) -> dict[KeyPath, int]:
    """Where each key sits: tomllib keeps no positions, so follow headers and ``key =`` lines."""
    lines: dict[KeyPath, int] = {}
    table: KeyPath = ()
    array_counts: dict[KeyPath, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if header := _TOML_HEADER.match(line):
            table = _toml_key_path(header.group(2))
            if header.group(1) == "[[":
                index = array_counts.get(table, 0)
                array_counts[table] = index + 1
                lines.setdefault(table, number)
                table = (*table, index)
            lines.setdefault(table, number)
        elif key := _TOML_KEY.match(line):
            path = (*table, *_toml_key_path(key.group(1)))
            for end in range(len(table) + 1, len(path) + 1):
                lines.setdefault(path[:end], number)
    return lines


def _toml_key_path(dotted: str) -> KeyPath:
    return tuple(part.strip().strip("\"'") for part in dotted.split("."))


INSTRUCTIONS = {"FROM", "PARAMETER", "SYSTEM", "TEMPLATE", "MESSAGE", "LICENSE", "ADAPTER", "REQUIRES"}


_SIMPLE = {"FROM": "from", "SYSTEM": "system", "TEMPLATE": "template"}


_WORD = re.compile(r"[A-Za-z_]{1,24}")


def _parse_ollama(text: str) -> Parsed:
    data: dict[str, Any] = {}
    lines: dict[KeyPath, int] = {}
    source = text.lstrip("\ufeff").splitlines()
    index = 0
    while index < len(source):
        number = index + 1
        stripped = source[index].strip()
        if not stripped or stripped.startswith("#"):
            index += 1
            continue
        keyword, rest = _first_word(stripped)
        instruction = keyword.upper()
        if instruction not in INSTRUCTIONS:
            named = f" '{keyword}'" if _WORD.fullmatch(keyword) else ""  # never echo what may be a secret
            raise ModelfileError(
                f"unknown instruction{named} (valid: {', '.join(sorted(INSTRUCTIONS - {'REQUIRES'}))})",
                line=number)
        if instruction == "ADAPTER":
            raise UnsupportedInstruction(
                "ADAPTER is not supported: merge the adapter into the model (peft's merge_and_unload), "
                "save it, and point FROM at that folder", line=number)
        head = ""
        if instruction in ("PARAMETER", "MESSAGE"):
            head, rest = _first_word(rest)
            if not head:
                raise ModelfileError(f"{instruction} needs a name and a value", line=number, field=instruction)
        value, index = _read_value(rest, source, index)
        if instruction != "TEMPLATE":
            value = value.strip()
        _apply_instruction(data, lines, instruction, head, value, number)
    if "from" not in data:
        raise ModelfileError("no FROM line", field="FROM")
    return Parsed(data, lines)


def _first_word(text: str) -> tuple[str, str]:
    word, _, rest = text.strip().replace("\t", " ").partition(" ")
    return word, text.strip()[len(word):]


def _apply_instruction(data: dict[str, Any], lines: dict[KeyPath, int], instruction: str, head: str,
                       value: str, number: int) -> None:
    if instruction in _SIMPLE:
        data[_SIMPLE[instruction]] = value
        lines[(_SIMPLE[instruction],)] = number
    elif instruction == "LICENSE":
        data["license"] = f"{data['license']}\n\n{value}" if "license" in data else value
        lines.setdefault(("license",), number)
    elif instruction == "MESSAGE":
        messages = data.setdefault("messages", [])
        lines[("messages", len(messages))] = number
        messages.append({"role": head, "content": value})
    elif instruction == "PARAMETER":
        parameters = data.setdefault("parameters", {})
        lines.setdefault(("parameters",), number)
        if head == "stop":
            lines.setdefault(("parameters", "stop"), number)
            lines[("parameters", "stop", len(parameters.setdefault("stop", [])))] = number
            parameters["stop"].append(value)
        else:
            lines[("parameters", head)] = number
            parameters[head] = value


def _read_value(rest: str, source: list[str], index: int) -> tuple[str, int]:
    """The value that starts at ``rest`` on line ``index``: plain, ``"quoted"`` or ``\"\"\"multi-line\"\"\"``.

    Returns the value and the index of the line after it. A quote left open runs on to the
    following lines, as in Ollama; reaching the end of the file inside one is an error.
    """
    rest = rest.strip()
    for quote in ('"""', '"'):
        if rest.startswith(quote):
            break
    else:
        return rest, index + 1
    body, start = rest[len(quote):], index
    collected: list[str] = []
    while True:
        end = _closing_quote(body, quote)
        if end is not None:
            collected.append(body[:end])
            if body[end + len(quote):].strip():
                raise ModelfileError(f"unexpected text after the closing {quote}", line=index + 1)
            value = "\n".join(collected)
            return (value.replace('\\"', '"') if quote == '"' else value), index + 1
        collected.append(body)
        index += 1
        if index >= len(source):
            raise ModelfileError(f"unterminated {quote}: the file ends inside it", line=start + 1)
        body = source[index]


def _closing_quote(text: str, quote: str) -> int | None:
    position = 0
    while (found := text.find(quote, position)) != -1:
        if quote == '"' and found > 0 and text[found - 1] == "\\":
            position = found + 1
            continue
        return found
    return None


PARSERS = {"yaml": _parse_yaml, "toml": _parse_toml, "ollama": _parse_ollama}
