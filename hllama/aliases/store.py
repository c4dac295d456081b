"""The alias store: the modelfiles folder and its ``registry.json`` mirror, changed under one lock.

Every change (create, install, remove) runs as lock → compile → write → compile → unlock, so two
processes never interleave and neither can lose the other's alias.
"""

from __future__ import annotations

import logging
from pathlib import Path

from filelock import FileLock

from hllama.aliases.modelfile import MODELFILE_SUFFIXES, Modelfile, dump_yaml, parse_modelfile, read_modelfile_text
from hllama.aliases.registry import (
    Registry,
    RegistryEntry,
    alias_name,
    builtin_entries,
    compile_folder,
    read_mirror,
    write_mirror,
)
from hllama.config import Settings
from hllama.errors import AliasExists, AliasNotFound, BuiltinAlias, ModelfileError
from hllama.fsutil import TEMPORARY, atomic_write_text
from hllama.names import normalize_alias

log = logging.getLogger(__name__)


class AliasStore:
    def __init__(self, settings: Settings) -> None:
        self.folder = settings.modelfiles_dir
        self.mirror = settings.registry_file
        self.builtins = settings.builtin_aliases
        settings.home.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(settings.home / "registry.lock"))

    def refresh(self) -> Registry:
        """Compile the folder now and bring ``registry.json`` up to date."""
        with self._lock:
            return self._compile()

    def create(self, name: str, modelfile: Modelfile, *, force: bool = False) -> RegistryEntry:
        """Write ``modelfile`` as ``NAME.yaml``; the file name carries the alias name."""
        name = normalize_alias(name)
        text = dump_yaml(modelfile.model_copy(update={"name": None}))
        parse_modelfile(text, fmt="yaml")  # what is written must read back
        return self._write(name, text, ".yaml", force=force)

    def install(self, source: Path, *, name: str | None = None, force: bool = False) -> RegistryEntry:
        """Validate ``source`` (any format) and add it to the folder.

        The file is copied as written (comments and format kept) when it means the same thing in
        its new place; otherwise (another name, a relative FROM) its validated content is written
        as YAML.
        """
        source = Path(source)
        text = read_modelfile_text(source)
        modelfile = parse_modelfile(text, path=source)
        name = normalize_alias(name) if name else alias_name(modelfile, source)
        suffix = source.suffix.lower() if source.suffix.lower() in MODELFILE_SUFFIXES else ".modelfile"
        target = self.folder / f"{name}{suffix}"
        try:
            moved = parse_modelfile(text, path=target)
            same = moved == modelfile and alias_name(moved, target) == name
        except ModelfileError:
            same = False
        if same:
            return self._write(name, text, suffix, force=force)
        return self.create(name, modelfile, force=force)

    def remove(self, names: list[str]) -> list[str]:
        """Delete the modelfiles of ``names``; nothing is deleted unless every name exists.

        A file that never validated has no alias, but its name (the file's stem) still removes it.
        """
        with self._lock:
            registry = self._compile()
            found: list[tuple[str, Path]] = []
            for name in names:
                entry = registry.get(normalize_alias(name))
                if entry is not None and entry.builtin:
                    raise BuiltinAlias(entry.name)
                path = entry.path if entry else _broken_file(registry, normalize_alias(name))
                if path is None:
                    raise AliasNotFound(name, known=list(registry.entries))
                found.append((entry.name if entry else path.stem, path))
            for _, path in found:
                path.unlink(missing_ok=True)
            self._compile()
        return [name for name, _ in found]

    def _write(self, name: str, text: str, suffix: str, *, force: bool) -> RegistryEntry:
        target = self.folder / f"{name}{suffix}"
        with self._lock:
            registry = self._compile()
            existing = registry.get(name)
            occupant = next((entry for entry in registry if entry.path == target and entry.name != name), None)
            if occupant is not None:  # never overwrite another alias's file, --force or not
                raise AliasExists(occupant.name, target)
            if (existing is not None or target.exists()) and not force:
                raise AliasExists(existing.name if existing else name, existing.path if existing else target)
            atomic_write_text(target, text)
            if existing is not None and existing.path != target and not existing.builtin:
                existing.path.unlink(missing_ok=True)
            entry = self._compile().get(name)
        if entry is None or entry.path != target:  # pragma: no cover - the file was validated above
            raise ModelfileError("the new modelfile did not compile", path=target)
        return entry

    def _compile(self) -> Registry:
        """Under the lock: no writer of ours is mid-write, so any temporary file left is a killed writer's."""
        _sweep_temporaries(self.folder, self.mirror)
        registry = compile_folder(self.folder, previous=read_mirror(self.mirror),
                                  builtins=builtin_entries() if self.builtins else ())
        write_mirror(registry, self.mirror)
        return registry


def _broken_file(registry: Registry, name: str) -> Path | None:
    """The file named ``name`` (any case) among those that do not validate, if there is one."""
    return next((error.path for error in registry.problems
                 if error.path is not None and error.path.stem.casefold() == name.casefold()), None)


def _sweep_temporaries(folder: Path, mirror: Path) -> None:
    """Delete what :func:`atomic_write_text` leaves when its process dies between writing and renaming."""
    leftovers = [path for path in (folder.glob(".*.tmp") if folder.is_dir() else ())
                 if TEMPORARY.fullmatch(path.name) and path.name[1:].rsplit(".", 2)[0].lower().endswith(
                     MODELFILE_SUFFIXES)]
    leftovers += [path for path in mirror.parent.glob(f".{mirror.name}.*.tmp") if TEMPORARY.fullmatch(path.name)]
    for path in leftovers:
        try:
            path.unlink()
        except OSError as exc:
            log.debug("cannot remove %s: %s", path, exc)
