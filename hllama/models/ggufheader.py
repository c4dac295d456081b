"""What a GGUF file says about itself, read from its header: metadata and tensor shapes, nothing loaded.

The ``gguf`` package's reader parses every value, a tokenizer's whole vocabulary included (seconds for a
small model); sizes, ``list`` and ``show`` need a few numbers, so arrays are skipped here rather than
read. A file is hostile until read: every count and length is checked against what is left of it.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Value types: struct formats of the fixed-size ones (GGUF is little-endian).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

#: llama.cpp's file types (``general.file_type``) by value, as Ollama names them; None: no longer written.
FILE_TYPES: tuple[str | None, ...] = (
    "F32", "F16", "Q4_0", "Q4_1", None, None, None, "Q8_0", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L",
    "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ2_XXS", "IQ2_XS", "Q2_K_S", "IQ3_XS", "IQ3_XXS", "IQ1_S",
    "IQ4_NL", "IQ3_S", "IQ3_M", "IQ2_S", "IQ2_M", "IQ4_XS", "IQ1_M", "BF16", None, None, None, "TQ1_0", "TQ2_0",
    "MXFP4_MOE",
)

#: Far beyond any real file, short of what would exhaust memory.
_MOST_ENTRIES = 1 << 20
_MOST_DIMENSIONS = 8


class NotGguf(ValueError):
    """A file that is not a GGUF file this reader understands (or is cut short)."""


@dataclass(frozen=True)
class GgufHeader:
    version: int
    metadata: dict[str, Any]  # every value but arrays (the tokenizer's vocabulary and merges are skipped)
    tensors: list[tuple[str, int, list[int]]] = field(default_factory=list)  # name, GGML type, dimensions

    @property
    def file_type(self) -> str | None:
        """The file's own quantization level (``Q4_K_M``), as Ollama reports it."""
        value = self.metadata.get("general.file_type")
        if isinstance(value, int) and 0 <= value < len(FILE_TYPES):
            return FILE_TYPES[value]
        return None


def read_header(path: Path) -> GgufHeader:
    """The metadata and tensor list of the GGUF file at ``path`` (:class:`NotGguf` if it is none)."""
    with path.open("rb") as handle:
        try:
            view = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise NotGguf(f"{path.name} is empty") from None
        with view:
            return _Reader(view).header()


class _Reader:
    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.at = 0

    def header(self) -> GgufHeader:
        if self._take(4) != b"GGUF":
            raise NotGguf("not a GGUF file (no GGUF magic number)")
        version = self._number("<I")
        if version not in (2, 3):
            raise NotGguf(f"GGUF version {version} is not supported (2 and 3 are)")
        tensor_count, kv_count = self._number("<Q"), self._number("<Q")
        if tensor_count > _MOST_ENTRIES or kv_count > _MOST_ENTRIES:
            raise NotGguf("the header claims more entries than any model has")
        metadata = {}
        for _ in range(kv_count):
            key = self._string()
            value = self._value(self._number("<I"))
            if value is not _SKIPPED:
                metadata[key] = value
        tensors = []
        for _ in range(tensor_count):
            name = self._string()
            dimensions = self._number("<I")
            if dimensions > _MOST_DIMENSIONS:
                raise NotGguf(f"tensor {name[:100]!r} claims {dimensions} dimensions")
            shape = [self._number("<Q") for _ in range(dimensions)]
            kind = self._number("<I")
            self._number("<Q")  # its offset in the data section
            tensors.append((name, kind, shape))
        return GgufHeader(version, metadata, tensors)

    def _take(self, size: int) -> bytes:
        start = self.at
        self._skip(size)
        return self.data[start:self.at]

    def _skip(self, size: int) -> None:
        if size > len(self.data) - self.at:
            raise NotGguf("the file ends inside its header")
        self.at += size

    def _number(self, form: str) -> Any:
        start = self.at
        self._skip(struct.calcsize(form))
        return struct.unpack_from(form, self.data, start)[0]

    def _string(self) -> str:
        return self._take(self._number("<Q")).decode("utf-8", errors="replace")

    def _value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self._number(_SCALARS[kind])
        if kind == _STRING:
            return self._string()
        if kind == _ARRAY:
            self._skip_array()
            return _SKIPPED
        raise NotGguf(f"unknown metadata value type {kind}")

    def _skip_array(self) -> None:
        kind, count = self._number("<I"), self._number("<Q")
        if kind in _SCALARS:
            self._skip(count * struct.calcsize(_SCALARS[kind]))
        elif kind == _STRING:
            if count > len(self.data):  # each string takes 8 bytes at least
                raise NotGguf("an array claims more strings than the file holds")
            for _ in range(count):
                self._skip(self._number("<Q"))
        elif kind == _ARRAY:  # arrays of arrays: no model writes them, and nothing here would read them
            raise NotGguf("nested metadata arrays are not supported")
        else:
            raise NotGguf(f"unknown metadata value type {kind}")


_SKIPPED = object()
