"""Modelfiles: the schema of an alias and its three spellings (YAML, TOML, Ollama's syntax).

Each parser turns text into plain data plus a map from key paths to line numbers; one pydantic
schema validates the data, and the line map turns its first complaint into ``file:line: field:
message``. Adding a format means writing one parser, nothing else.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hllama.conversation import Message
from hllama.errors import ModelfileError, UnsupportedInstruction
from hllama.names import LEGACY_REPO_ID, REVISION, is_local_path, looks_like_repo_id, normalize_alias
from hllama.options import SYNONYMS, LoadOptions, Parameters
from hllama.validation import KeyPath, Text, describe, field_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Format = Literal["yaml", "toml", "ollama"]


#: A modelfile is a few KiB (a long license included); anything near this is not one.
MAX_MODELFILE_BYTES = 1024 * 1024

#: File names the modelfiles folder is scanned for.
MODELFILE_SUFFIXES = (".yaml", ".yml", ".toml", ".modelfile")


class Modelfile(BaseModel):
    """One alias: which model, how to load it, and how it talks by default."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Text | None = Field(None, description="alias name; defaults to the file's stem")
    from_: Text = Field(alias="from", min_length=1, description="Hub repo id, local model folder or .gguf file")
    revision: Text | None = Field(None, description="branch, tag or commit on the Hub")
    description: Text | None = None
    system: Text | None = Field(None, description="system prompt")
    template: Text | None = Field(None, description="Jinja chat template that replaces the tokenizer's")
    license: Text | None = None
    messages: list[Message] | None = Field(None, description="seed conversation")
    parameters: Parameters = Field(default_factory=Parameters)
    load: LoadOptions = Field(default_factory=LoadOptions)

    def with_local_path_from(self, base: Path) -> Modelfile:
        """This alias with a relative local ``from`` made absolute against ``base``."""
        if not is_local_path(self.from_):
            return self
        return self.model_copy(update={"from_": str((base / Path(self.from_).expanduser()).resolve())})

    @field_validator("from_")
    @classmethod
    def _model_reference(cls, value: str) -> str:
        if not (is_local_path(value) or looks_like_repo_id(value) or LEGACY_REPO_ID.fullmatch(value)):
            raise ValueError("expected a Hub repo id (owner/name), a local model folder (./path, /path) "
                             "or a .gguf file")
        return value

    @field_validator("revision")
    @classmethod
    def _revision(cls, value: str | None) -> str | None:
        if value is not None and not (REVISION.fullmatch(value) and ".." not in value):
            raise ValueError("expected a branch, tag or commit (letters, digits, '.', '_', '-', '/')")
        return value

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str | None) -> str | None:
        return None if value is None else normalize_alias(value)

    @field_validator("template")
    @classmethod
    def _jinja_template(cls, value: str | None) -> str | None:
        if value is not None:
            _check_jinja(value)
        return value


def _check_jinja(text: str) -> None:
    import jinja2  # only modelfiles with a template pay for the import

    try:
        jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(
            f"not a Jinja chat template (template line {exc.lineno}: {exc.message}); "
            "hllama uses Hugging Face Jinja templates, not Ollama's Go templates") from None


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


# ---------------------------------------------------------------------------------------------
# Public entry points


def load_modelfile(path: Path | str) -> Modelfile:
    """Read and validate one modelfile; any problem is a :class:`ModelfileError` naming the file."""
    return parse_modelfile(read_modelfile_text(Path(path)), path=Path(path))


def read_modelfile_text(path: Path) -> str:
    """The file's text (a byte-order mark dropped), or a :class:`ModelfileError` saying why not.

    Only a regular file of at most :data:`MAX_MODELFILE_BYTES` is read: a FIFO, a device such as
    ``/dev/zero`` or a huge file is refused without waiting on it or holding it in memory.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opening a FIFO must not wait for a writer
    except OSError as exc:
        raise ModelfileError(f"cannot read: {exc.strerror or exc}", path=path) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ModelfileError("not a regular file", path=path)
        data = _read_at_most(fd, MAX_MODELFILE_BYTES + 1)
    except OSError as exc:
        raise ModelfileError(f"cannot read: {exc.strerror or exc}", path=path) from None
    finally:
        os.close(fd)
    if len(data) > MAX_MODELFILE_BYTES:
        raise ModelfileError(f"too large: a modelfile may hold at most {MAX_MODELFILE_BYTES // 1024} KiB", path=path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ModelfileError("not a UTF-8 text file", path=path) from None


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit and (chunk := os.read(fd, min(65536, limit - size))):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def parse_modelfile(text: str, *, path: Path | None = None, fmt: Format | None = None) -> Modelfile:
    fmt = fmt or detect_format(text, path)
    try:
        try:
            parsed = _PARSERS[fmt](text)
        except RecursionError:
            raise ModelfileError("nested too deeply") from None
        return _validate(parsed, base=path.parent if path else Path.cwd())
    except ModelfileError as exc:
        if path is None:
            raise
        raise exc.with_path(path) from None


def detect_format(text: str, path: Path | None = None) -> Format:
    """By extension where it says; otherwise Ollama's syntax if the first instruction is one of its."""
    suffix = path.suffix.lower() if path else ""
    if suffix in (".yaml", ".yml"):
        return "yaml"
    if suffix == ".toml":
        return "toml"
    for line in text.lstrip("\ufeff").splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return "ollama" if stripped.split(None, 1)[0].upper() in _INSTRUCTIONS else "yaml"
    return "yaml"


def dump_yaml(modelfile: Modelfile) -> str:
    """The alias as a YAML modelfile, leaving out what is unset."""
    from ruamel.yaml import YAML
    from ruamel.yaml.scalarstring import LiteralScalarString

    def literal_if_multiline(value: Any) -> Any:
        if isinstance(value, str) and "\n" in value:
            return LiteralScalarString(value)
        if isinstance(value, dict):
            return {key: literal_if_multiline(item) for key, item in value.items()}
        if isinstance(value, list):
            return [literal_if_multiline(item) for item in value]
        return value

    data = modelfile.model_dump(by_alias=True, exclude_none=True)
    data = {key: value for key, value in data.items() if value != {}}
    out = StringIO()
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.width = 4096
    yaml.dump(literal_if_multiline(data), out)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# Validation: one schema for every format


def _validate(parsed: Parsed, *, base: Path) -> Modelfile:
    try:
        modelfile = Modelfile.model_validate(parsed.data)
    except ValidationError as exc:
        raise _first_problem(exc, parsed) from None
    # Like Ollama, a relative FROM is relative to the modelfile, wherever it is read from.
    return modelfile.with_local_path_from(base)


def _first_problem(exc: ValidationError, parsed: Parsed) -> ModelfileError:
    """The problem written earliest in the file (problems without a line come last)."""
    problems = [
        (parsed.line_of(tuple(error["loc"])), field_name(tuple(error["loc"])),
         describe(error, schema=Modelfile, data=parsed.data, synonyms=SYNONYMS, echo_text=False))
        for error in exc.errors()
    ]
    line, name, message = min(problems, key=lambda problem: problem[0] or float("inf"))
    return ModelfileError(message, line=line, field=name or None)


# ---------------------------------------------------------------------------------------------
# YAML


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


# ---------------------------------------------------------------------------------------------
# TOML

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


# ---------------------------------------------------------------------------------------------
# Ollama's Modelfile syntax

_INSTRUCTIONS = {"FROM", "PARAMETER", "SYSTEM", "TEMPLATE", "MESSAGE", "LICENSE", "ADAPTER", "REQUIRES"}
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
        if instruction not in _INSTRUCTIONS:
            named = f" '{keyword}'" if _WORD.fullmatch(keyword) else ""  # never echo what may be a secret
            raise ModelfileError(
                f"unknown instruction{named} (valid: {', '.join(sorted(_INSTRUCTIONS - {'REQUIRES'}))})",
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
    # REQUIRES names an Ollama version; it does not apply here.


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


_PARSERS = {"yaml": _parse_yaml, "toml": _parse_toml, "ollama": _parse_ollama}


def dump_ollama(modelfile: Modelfile, *, header: str = "") -> str:
    """The alias in Ollama's Modelfile syntax, as ``ollama show --modelfile`` prints one.

    Only what Ollama's syntax can say: load options have no instruction there.
    """
    lines = [header] if header else []
    lines.append(f"FROM {modelfile.from_}")
    if modelfile.template is not None:
        lines.append(f'TEMPLATE """{modelfile.template}"""')
    if modelfile.system is not None:
        lines.append(f'SYSTEM """{modelfile.system}"""')
    ollama_names = {canonical: synonym for synonym, canonical in SYNONYMS.items()}
    for name, value in modelfile.parameters.model_dump(exclude_none=True).items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {ollama_names.get(name, name)} {_ollama_value(item)}")
    for message in modelfile.messages or []:
        lines.append(f'MESSAGE {message.role} """{message.content}"""')
    if modelfile.license is not None:
        lines.append(f'LICENSE """{modelfile.license}"""')
    return "\n".join(lines) + "\n"


def _ollama_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False) if (not value or value != value.strip() or '"' in value
                                                         or " " in value) else value
    return str(value)
