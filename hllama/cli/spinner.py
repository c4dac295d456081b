"""A sign of life on the terminal while something long happens (a model loading), as ``ollama run`` shows one."""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

#: How often the line is redrawn, in seconds.
_EVERY = 0.1


@contextmanager
def spinner(label: str, status: Callable[[], str] = lambda: "", *, stream: TextIO | None = None) -> Iterator[None]:
    """While the block runs: one line on ``stream`` (stderr) with a spinner, ``label``, the seconds so far and what
    ``status`` says now; erased when the block ends. Where ``stream`` is no terminal (a pipe, a file, a log),
    nothing is written at all."""
    stream = stream or sys.stderr
    if not stream.isatty():
        yield
        return
    done = threading.Event()
    started = time.monotonic()

    def draw() -> None:
        frame = 0
        while not done.wait(_EVERY):
            said = status()
            line = f"{_FRAMES[frame % len(_FRAMES)]} {label} ({time.monotonic() - started:.0f} s)"
            line += f" {said}" if said else ""
            width = shutil.get_terminal_size((80, 24)).columns - 1
            stream.write("\r\x1b[K" + line[:width])
            stream.flush()
            frame += 1

    thread = threading.Thread(target=draw, daemon=True, name="hllama-spinner")
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        stream.write("\r\x1b[K")
        stream.flush()
