"""Compile a folder of modelfiles into a registry, and mirror it to ``registry.json``.

The modelfiles are the truth; ``registry.json`` is a mirror that can always be rebuilt from them.
It also remembers the last good version of every alias, so a file that breaks keeps serving what
it said before, with its error shown, instead of vanishing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from pydantic import ValidationError

from hllama.aliases.modelfile import MODELFILE_SUFFIXES, Modelfile, parse_modelfile, read_modelfile_text
from hllama.errors import DuplicateAlias, InvalidAliasName, ModelfileError
from hllama.fsutil import atomic_write_text
from hllama.models import embedded
from hllama.names import normalize_alias

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

#: registry.json holds small entries; a file this large is damage, not a registry.
MAX_MIRROR_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class RegistryEntry:
    """One alias and the file it came from.

    ``modified`` is the file's mtime when it was read, so readers of a snapshot never touch a file
    that may be gone by now. ``error`` is set when the file no longer validates and this is its last
    good version. A built-in alias is one a modelfile of the same name replaces.
    """

    name: str
    modelfile: Modelfile
    path: Path
    digest: str
    modified: float = 0.0
    error: ModelfileError | None = None
    builtin: bool = False  # shipped with hllama: no modelfile of its own (``path`` is what its model is made from)


#: What reading one file gave: its alias, or why it has none.
Outcome = RegistryEntry | ModelfileError


@dataclass(frozen=True)
class Registry:
    """An immutable snapshot: readers keep the one they got while a new one is compiled.

    ``parsed`` keeps each file's outcome under the digest of the text it came from, so the next
    compile parses only files whose content changed.
    """

    folder: Path
    entries: Mapping[str, RegistryEntry] = field(default_factory=dict)
    problems: tuple[ModelfileError, ...] = ()
    parsed: Mapping[Path, tuple[str, Outcome]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", MappingProxyType(dict(sorted(self.entries.items()))))
        object.__setattr__(self, "_by_folded", {name.casefold(): entry for name, entry in self.entries.items()})

    def get(self, name: str) -> RegistryEntry | None:
        """The alias ``name``, spelled in any case (as Ollama's names are)."""
        try:
            name = normalize_alias(name)
        except InvalidAliasName:
            return None
        return self.entries.get(name) or self._by_folded.get(name.casefold())

    def __iter__(self) -> Iterator[RegistryEntry]:
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)


def modelfile_paths(folder: Path) -> list[Path]:
    """The modelfiles in ``folder``: known suffixes, no hidden or temporary files."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir()
                  if path.suffix.lower() in MODELFILE_SUFFIXES and not path.name.startswith(".")
                  and path.is_file())


def alias_name(modelfile: Modelfile, path: Path) -> str:
    """The file's ``name`` if it has one, else its stem."""
    try:
        return modelfile.name or normalize_alias(path.stem)
    except InvalidAliasName as exc:
        raise ModelfileError(f"the file name does not make a valid alias ({exc.reason}); "
                             "rename the file or set 'name'", path=path) from None


def compile_folder(folder: Path, *, previous: Registry | None = None,
                   builtins: Iterable[RegistryEntry] = ()) -> Registry:
    """Every valid modelfile in ``folder``, and the ``builtins`` no file's alias replaces; broken files keep their
    last good version from ``previous``.

    Problems are returned in ``Registry.problems``, not logged: each front end reports them its way.
    A file whose text is unchanged since ``previous`` is not parsed again.
    """
    last_good = {entry.path: entry for entry in previous} if previous else {}
    known = previous.parsed if previous else {}
    candidates: dict[str, list[RegistryEntry]] = {}
    problems: list[ModelfileError] = []
    parsed: dict[Path, tuple[str, Outcome]] = {}
    for path in modelfile_paths(folder):
        digest, outcome = read_outcome(path, folder=folder, known=known)
        parsed[path] = (digest, outcome)
        if isinstance(outcome, ModelfileError):
            problems.append(outcome)
            if (good := last_good.get(path)) is None:
                continue
            outcome = replace(good, path=path, error=outcome)
        candidates.setdefault(outcome.name.casefold(), []).append(outcome)  # names differing in case only clash
    entries = {}
    for claimants in candidates.values():
        keep = _pick_claimant(claimants, last_good)
        entries[keep.name] = keep
        for other in claimants:
            if other is not keep:
                problems.append(DuplicateAlias(
                    f"alias '{keep.name}' is already declared in {keep.path}; rename one of them", path=other.path))
    for builtin in builtins:
        if builtin.name.casefold() not in candidates:
            entries[builtin.name] = builtin
    return Registry(folder, entries, tuple(problems), parsed)


def builtin_entries() -> list[RegistryEntry]:
    """The aliases hllama ships: the embedded default, where the package that carries its model is installed."""
    if (gguf := embedded.gguf_file()) is None:
        return []
    try:
        modelfile = Modelfile.model_validate(embedded.modelfile_data(gguf))
        modified = gguf.stat().st_mtime
    except (OSError, ValidationError):  # pragma: no cover - the file went away while it was looked at
        return []
    text = json.dumps(modelfile.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=True)
    return [RegistryEntry(embedded.NAME, modelfile, gguf, _digest(text), modified, builtin=True)]


def read_outcome(path: Path, *, folder: Path, known: Mapping[Path, tuple[str, Outcome]] = MappingProxyType({})
                 ) -> tuple[str, Outcome]:
    """(the digest of the file's text, its entry or its error); reuses ``known`` when the text is the same."""
    try:
        modified = path.stat().st_mtime
        _inside(path, folder)
        text = read_modelfile_text(path)
    except ModelfileError as error:
        return "", error
    except OSError as exc:
        return "", ModelfileError(f"cannot read: {exc.strerror or exc}", path=path)
    digest = _digest(text)
    cached_digest, cached = known.get(path, ("", None))
    if cached is not None and cached_digest == digest:
        return digest, replace(cached, modified=modified) if isinstance(cached, RegistryEntry) else cached
    try:
        modelfile = parse_modelfile(text, path=path)
        return digest, RegistryEntry(alias_name(modelfile, path), modelfile, path, digest, modified)
    except ModelfileError as error:
        return digest, error


def _inside(path: Path, folder: Path) -> None:
    """A file of the folder that links elsewhere is refused: it would read, and show, a file outside it."""
    if path.is_symlink() and not path.resolve().is_relative_to(folder.resolve()):
        raise ModelfileError("a link to a file outside the modelfiles folder; copy the file in instead", path=path)


def _pick_claimant(claimants: list[RegistryEntry], last_good: Mapping[Path, RegistryEntry]) -> RegistryEntry:
    """Of files declaring one name, the one that already held it wins; else the first by path."""
    for entry in claimants:
        if (good := last_good.get(entry.path)) is not None and good.name == entry.name:
            return entry
    return claimants[0]


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# The registry.json mirror


def to_json(registry: Registry) -> str:
    # the digest of the text each parse error came from (a duplicate is no parse error, so by identity)
    parse_errors = {id(outcome): digest for digest, outcome in registry.parsed.values()
                    if isinstance(outcome, ModelfileError)}
    document = {
        "schema_version": SCHEMA_VERSION,
        "folder": str(registry.folder),
        "aliases": {
            entry.name: {
                "source": str(entry.path),
                "digest": entry.digest,
                "modified": entry.modified,
                "modelfile": entry.modelfile.model_dump(mode="json", by_alias=True, exclude_none=True),
                "error": str(entry.error) if entry.error else None,
                **({"builtin": True} if entry.builtin else {}),
            }
            for entry in registry
        },
        "problems": [
            {"path": str(error.path), "line": error.line, "field": error.field, "message": error.message,
             "digest": parse_errors.get(id(error))}
            for error in registry.problems
        ],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def write_mirror(registry: Registry, path: Path) -> None:
    """Atomically replace ``path``; skipped when nothing changed, so watchers are not woken.

    Whatever is in the way (a damaged file, a folder) is replaced: the mirror can always be rebuilt.
    """
    text = to_json(registry)
    try:
        if path.read_bytes() == text.encode("utf-8"):
            return
    except OSError:
        pass
    if path.is_dir() and not path.is_symlink():
        aside = path.with_name(f"{path.name}.damaged-{time.time_ns()}")
        log.warning("%s is a folder; moved it to %s and rebuilt the registry", path, aside.name)
        path.rename(aside)
    atomic_write_text(path, text)


def read_mirror(path: Path) -> Registry | None:
    """The registry last written to ``path``, or None when it is missing, foreign or damaged in any way.

    Only its aliases (as last good versions) and what each file parsed to are needed, so anything
    doubtful is simply dropped: the modelfiles can rebuild the rest.
    """
    try:
        if path.stat().st_size > MAX_MIRROR_BYTES:
            return None
        document = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(document, dict) or document.get("schema_version") != SCHEMA_VERSION:
        return None
    entries: dict[str, RegistryEntry] = {}
    parsed: dict[Path, tuple[str, Outcome]] = {}
    aliases = document.get("aliases")
    for name, item in (aliases.items() if isinstance(aliases, dict) else ()):
        if isinstance(item, dict) and item.get("builtin"):  # not a file's: nothing to remember of it
            continue
        try:
            entry = RegistryEntry(normalize_alias(name), Modelfile.model_validate(item["modelfile"]),
                                  Path(item["source"]), str(item["digest"]), float(item.get("modified", 0.0)))
        except (AttributeError, KeyError, TypeError, ValueError, ValidationError, RecursionError):
            log.debug("dropping unreadable registry entry %r", name)
            continue
        entries[entry.name] = entry
        if item.get("error") is None:
            parsed[entry.path] = (entry.digest, entry)
    problems = document.get("problems")
    for item in (problems if isinstance(problems, list) else ()):
        try:
            if item.get("digest"):
                error = ModelfileError(str(item["message"]), path=Path(item["path"]), line=item.get("line"),
                                       field=item.get("field"))
                parsed[error.path] = (str(item["digest"]), error)  # type: ignore[index]
        except (AttributeError, KeyError, TypeError, ValueError):
            continue
    return Registry(Path(str(document.get("folder", ""))), entries, parsed=parsed)


@dataclass(frozen=True)
class Changes:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    new_problems: tuple[ModelfileError, ...]


def changes(old: Registry, new: Registry) -> Changes:
    """What a recompile changed: aliases added, removed or edited (content or file), and new problems."""
    def version(registry: Registry, name: str) -> tuple[str, Path]:
        return registry.entries[name].digest, registry.entries[name].path

    edited = [name for name in set(old.entries) & set(new.entries) if version(old, name) != version(new, name)]
    reported = {str(error) for error in old.problems}
    return Changes(added=tuple(sorted(set(new.entries) - set(old.entries))),
                   removed=tuple(sorted(set(old.entries) - set(new.entries))), changed=tuple(sorted(edited)),
                   new_problems=tuple(error for error in new.problems if str(error) not in reported))
