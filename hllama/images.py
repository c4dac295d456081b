"""Images sent with a request: decoded and checked before anything else sees them.

Every image is hostile until it opens as one of the formats models are given, within a size and a pixel count
that cannot exhaust memory, and decodes to its end; anything else is an :class:`InvalidOption` (HTTP 400) that
says what is wrong. Remote URLs are not fetched, as Ollama does not: a client sends the image itself.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from hllama.errors import InvalidOption

#: The largest encoded image a request may carry.
MAX_IMAGE_BYTES = 20 * 1024 * 1024

#: The most pixels an image may have (width x height): a 20000x20000 image is refused before it is decoded.
MAX_PIXELS = 40_000_000

#: The formats an image may come in.
FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP"})

#: The most images one request may carry.
MAX_IMAGES = 16


def from_base64(text: str, *, where: str) -> bytes:
    """Ollama's ``images`` entries: base64 text of an image file."""
    if len(text) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise InvalidOption(f"{where}: the image is larger than {MAX_IMAGE_BYTES // 2**20} MiB")
    try:
        data = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidOption(f"{where}: not base64 text of an image") from None
    checked(data, where=where)
    return data


def from_url(url: str, *, where: str) -> bytes:
    """An OpenAI-style ``image_url``: a ``data:image/...;base64,...`` URI (remote URLs are refused)."""
    if url.startswith(("http://", "https://")):
        raise InvalidOption(f"{where}: remote image URLs are not fetched; send the image as a data: URI "
                            "(data:image/png;base64,...)")
    header, comma, payload = url.partition(",")
    if not url.startswith("data:") or not comma or not header.endswith(";base64"):
        raise InvalidOption(f"{where}: an image is a data: URI with base64 content (data:image/png;base64,...)")
    kind = header[len("data:"):-len(";base64")]
    if not kind.startswith("image/"):
        raise InvalidOption(f"{where}: a data: URI of type {kind[:50]!r} is not an image")
    return from_base64(payload, where=where)


def checked(data: bytes, *, where: str) -> None:
    """``data`` opens as an image of an allowed format and size, and decodes to its end."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidOption(f"{where}: the image is larger than {MAX_IMAGE_BYTES // 2**20} MiB")
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            if image.format not in FORMATS:
                raise InvalidOption(f"{where}: {image.format or 'this'} images are not supported "
                                    f"(use {', '.join(sorted(FORMATS))})")
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise InvalidOption(f"{where}: a {width}x{height} image has more than {MAX_PIXELS:,} pixels")
            image.load()  # a truncated or corrupt file fails here
    except InvalidOption:
        raise
    except Image.DecompressionBombError:  # so large that PIL refuses even to read on
        raise InvalidOption(f"{where}: the image has more than {MAX_PIXELS:,} pixels") from None
    except UnidentifiedImageError:
        raise InvalidOption(f"{where}: not an image") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidOption(f"{where}: the image cannot be decoded ({str(exc).splitlines()[0][:200]})") from None


def opened(data: bytes) -> Any:
    """A checked image as the RGB picture a processor takes."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")
