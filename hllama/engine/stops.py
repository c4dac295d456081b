"""Stop strings over streamed text: cut at the first one, never show a piece of one.

Pure text logic, no tokenizer: the generator feeds the text decoded so far and gets back only
what is safe to show. A tail that could still grow into a stop string is held back until the next
piece proves it is not one (or generation ends).
"""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: list[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text, once one has
        self.text = ""  # everything shown so far (and, once stopped, the final text)
        self._longest = max((len(stop) for stop in self.stops), default=0)

    def feed(self, decoded: str) -> str:
        """Given all text decoded so far, the new piece that is safe to show."""
        if self.stopped:
            return ""
        start = max(0, len(self.text) - self._longest)
        hits = [(index, stop) for stop in self.stops if (index := decoded.find(stop, start)) != -1]
        if hits:
            self.stopped = True
            index, self.matched = min(hits, key=lambda hit: hit[0])
            return self._advance(decoded[:index])
        return self._advance(decoded[: len(decoded) - self._held(decoded)])

    def flush(self, decoded: str) -> str:
        """Generation ended without a stop string: show what was held back."""
        return "" if self.stopped else self._advance(decoded)

    def _advance(self, upto: str) -> str:
        piece = upto[len(self.text):]
        self.text = upto
        return piece

    def _held(self, decoded: str) -> int:
        """Length of the longest tail of ``decoded`` that begins some stop string."""
        for size in range(min(self._longest - 1, len(decoded)), 0, -1):
            tail = decoded[-size:]
            if any(stop.startswith(tail) for stop in self.stops):
                return size
        return 0
