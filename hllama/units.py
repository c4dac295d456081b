"""Sizes as people read them: the one place bytes are formatted (no imports, so every layer may use it)."""

from __future__ import annotations


def format_bytes(size: float, *, binary: bool = False) -> str:
    """``1536`` -> ``1.5 KB``: decimal units, as Ollama and the Hub print sizes; ``binary``: ``1.5 KiB``, as
    Ollama words a model that does not fit."""
    step, units = (1024, ("B", "KiB", "MiB", "GiB", "TiB")) if binary else (1000, ("B", "KB", "MB", "GB", "TB"))
    for unit in units:
        if abs(size) < step or unit == units[-1]:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= step
    raise AssertionError("unreachable")
