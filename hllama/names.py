"""What a model name is: an alias, a Hub repo id, or a local path."""

from __future__ import annotations

import re
from pathlib import Path

from hllama.errors import InvalidAliasName

_PART = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
_ALIAS = re.compile(rf"{_PART}(?::{_PART})?")
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")

#: Early Hub models have no owner ("gpt2").
LEGACY_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")

#: Room for the file's suffix and its temporary name within the 255 bytes a file name may have.
MAX_ALIAS_LENGTH = 200

#: A branch, tag or commit on the Hub (``main``, ``v1.0``, ``refs/pr/1``, a 40-digit sha).
REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")


def normalize_alias(name: str) -> str:
    """The canonical spelling of an alias name, or :class:`InvalidAliasName`.

    Letters, digits, ``.``, ``_`` and ``-``, with an optional ``:tag``; ``NAME:latest`` is ``NAME``.
    Anything that could leave the modelfiles folder (``/``, ``..``, a leading dot) is refused.
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidAliasName(str(name), "it is empty")
    if "/" in name or "\\" in name:
        raise InvalidAliasName(name, "path separators are not allowed")
    if ".." in name:
        raise InvalidAliasName(name, "'..' is not allowed")
    if len(name) > MAX_ALIAS_LENGTH:
        raise InvalidAliasName(name, f"longer than {MAX_ALIAS_LENGTH} characters")
    if not _ALIAS.fullmatch(name):
        raise InvalidAliasName(
            name, "use letters, digits, '.', '_' and '-', optionally ':tag', starting with a letter or digit")
    base, _, tag = name.partition(":")
    return base if tag == "latest" else name


def is_local_path(text: str) -> bool:
    """An explicit file-system path (``./x``, ``../x``, ``/x``, ``~/x``) or a ``.gguf`` file."""
    return text.startswith(("/", "./", "../", "~", ".\\", "..\\")) or text in {".", ".."} \
        or text.lower().endswith(".gguf")


def looks_like_repo_id(text: str) -> bool:
    """``owner/name`` as the Hub spells repository ids (at most 96 characters; revision not included)."""
    return len(text) <= 96 and bool(_REPO_ID.fullmatch(text)) and ".." not in text


def is_model_path(text: str) -> bool:
    """A local path that holds a model: a folder with config.json or .gguf files, or a GGUF file itself.

    Anything else (``/etc/shadow``, ``~/.ssh``, ``/``) is no model, so nothing of it is ever read or shown.
    """
    path = _path(text)
    if path is None:
        return False
    try:
        if path.is_dir():
            return (path / "config.json").is_file() or any(path.glob("*.gguf"))
    except OSError:  # unreadable, or a name the file system refuses to look up
        return False
    return path.suffix.lower() == ".gguf" and _is_gguf(path)


def _is_gguf(path: Path) -> bool:
    """A regular file that starts with GGUF's magic bytes (a FIFO or device is never opened)."""
    try:
        if not path.is_file():
            return False
        with path.open("rb") as handle:
            return handle.read(4) == b"GGUF"
    except OSError:
        return False


#: Linux's limits (PATH_MAX, NAME_MAX), in bytes: a longer name is no file's, and asking the system about it fails.
MAX_PATH_BYTES, MAX_NAME_BYTES = 4096, 255


def _path(text: str) -> Path | None:
    """``text`` as a local path, or None when no file could have that name (NUL, control characters, a name or a
    part of one longer than the file system allows): such a name is never handed to the file system."""
    if not text or any(ord(char) < 32 for char in text):
        return None
    try:
        text.encode("utf-8")
        path = Path(text).expanduser()
    except (UnicodeEncodeError, RuntimeError):  # a lone surrogate; ~user that does not exist
        return None
    if len(bytes(path)) > MAX_PATH_BYTES or any(len(part.encode("utf-8")) > MAX_NAME_BYTES for part in path.parts):
        return None
    return path
