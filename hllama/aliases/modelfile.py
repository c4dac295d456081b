"""Modelfiles: the schema of an alias and its three spellings (YAML, TOML, Ollama's syntax).

Each parser (:mod:`~hllama.aliases.syntaxes`) turns text into plain data plus a map from key paths to line
numbers; one pydantic schema validates the data, and the line map turns its first complaint into ``file:line:
field: message``. Adding a format means writing one parser, nothing else.
"""

from __future__ import annotations

import json
import os
import stat
from io import StringIO
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hllama.aliases.syntaxes import INSTRUCTIONS, PARSERS, Parsed
from hllama.conversation import Message
from hllama.errors import ModelfileError
from hllama.names import LEGACY_REPO_ID, REVISION, is_local_path, looks_like_repo_id, normalize_alias
from hllama.options import SYNONYMS, LoadOptions, Parameters
from hllama.validation import Text, describe, field_name

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
            parsed = PARSERS[fmt](text)
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
            return "ollama" if stripped.split(None, 1)[0].upper() in INSTRUCTIONS else "yaml"
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








    # REQUIRES names an Ollama version; it does not apply here.


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
