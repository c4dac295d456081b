"""What a model name is: an alias, a Hub repo id, or a local path."""

from __future__ import annotations

import re
from pathlib import Path

from hllama.errors import InvalidAliasName

_PART = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
_ALIAS = re.compile(rf"{_PART}(?::{_PART})?")
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


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
    """``owner/name`` as the Hub spells repository ids (revision not included)."""
    return bool(_REPO_ID.fullmatch(text)) and ".." not in text


def is_model_folder(text: str) -> bool:
    """A local folder that holds a transformers model."""
    path = Path(text).expanduser()
    return path.is_dir() and (path / "config.json").is_file()
