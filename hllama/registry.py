"""Compile a folder of modelfiles into a registry, and mirror it to ``registry.json``.

The modelfiles are the truth; ``registry.json`` is a mirror that can always be rebuilt from them.
It also remembers the last good version of every alias, so a file that breaks keeps serving what
it said before, with its error shown, instead of vanishing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from pydantic import ValidationError

from hllama.errors import DuplicateAlias, InvalidAliasName, ModelfileError
from hllama.fsutil import atomic_write_text
from hllama.modelfile import MODELFILE_SUFFIXES, Modelfile, parse_modelfile, read_modelfile_text
from hllama.names import normalize_alias

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class RegistryEntry:
    """One alias and the file it came from.

    ``modified`` is the file's mtime when it was read, so readers of a snapshot never touch a file
    that may be gone by now. ``error`` is set when the file no longer validates and this is its last
    good version.
    """

    name: str
    modelfile: Modelfile
    path: Path
    digest: str
    modified: float = 0.0
    error: ModelfileError | None = None


@dataclass(frozen=True)
class Registry:
    """An immutable snapshot: readers keep the one they got while a new one is compiled."""

    folder: Path
    entries: Mapping[str, RegistryEntry] = field(default_factory=dict)
    problems: tuple[ModelfileError, ...] = ()

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


def compile_folder(folder: Path, *, previous: Registry | None = None) -> Registry:
    """Every valid modelfile in ``folder``; broken files keep their last good version from ``previous``.

    Problems are returned in ``Registry.problems``, not logged: each front end reports them its way.
    """
    last_good = {entry.path: entry for entry in previous} if previous else {}
    candidates: dict[str, list[RegistryEntry]] = {}
    problems: list[ModelfileError] = []
    for path in modelfile_paths(folder):
        try:
            entry = read_entry(path)
        except ModelfileError as error:
            problems.append(error)
            if (good := last_good.get(path)) is None:
                continue
            entry = replace(good, path=path, error=error)
        candidates.setdefault(entry.name.casefold(), []).append(entry)  # names differing in case only clash
    entries = {}
    for claimants in candidates.values():
        keep = _pick_claimant(claimants, last_good)
        entries[keep.name] = keep
        for other in claimants:
            if other is not keep:
                problems.append(DuplicateAlias(
                    f"alias '{keep.name}' is already declared in {keep.path}; rename one of them", path=other.path))
    return Registry(folder, entries, tuple(problems))


def read_entry(path: Path) -> RegistryEntry:
    try:
        modified = path.stat().st_mtime
    except OSError as exc:
        raise ModelfileError(f"cannot read: {exc.strerror or exc}", path=path) from None
    text = read_modelfile_text(path)
    modelfile = parse_modelfile(text, path=path)
    return RegistryEntry(alias_name(modelfile, path), modelfile, path, _digest(text), modified)


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
            }
            for entry in registry
        },
        "problems": [
            {"path": str(error.path), "line": error.line, "field": error.field, "message": error.message}
            for error in registry.problems
        ],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def write_mirror(registry: Registry, path: Path) -> None:
    """Atomically replace ``path``; skipped when nothing changed, so watchers are not woken."""
    text = to_json(registry)
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except OSError:
        pass
    atomic_write_text(path, text)


def read_mirror(path: Path) -> Registry | None:
    """The registry last written to ``path``, or None when it is missing, foreign or unreadable.

    Only its aliases are needed (as last good versions), so anything doubtful is simply dropped:
    the modelfiles can rebuild the rest.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("schema_version") != SCHEMA_VERSION:
        return None
    entries = {}
    for name, item in (document.get("aliases") or {}).items():
        try:
            entries[name] = RegistryEntry(name, Modelfile.model_validate(item["modelfile"]),
                                          Path(item["source"]), str(item["digest"]),
                                          float(item.get("modified", 0.0)))
        except (AttributeError, KeyError, TypeError, ValueError, ValidationError):
            log.debug("dropping unreadable registry entry %r", name)
    return Registry(Path(document.get("folder", "")), entries)


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
