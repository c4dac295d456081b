"""The one driver every API's answers go through, each API bringing its own :class:`Encoder`.

The driver takes the first item before answering, so that loading, prompt building and the first token fail with
an HTTP status; after that, the answer streams in the encoder's framing (NDJSON, SSE), and a failure becomes the
encoder's error line or event rather than a broken connection. A client that does not stream gets the encoder's
whole body instead. Either way the backend's stream is closed, so a client that leaves frees the model at once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from hllama.aliases.resolve import Overrides, Resolved
from hllama.backends import Prompted
from hllama.errors import HllamaError, InvalidOption
from hllama.runtime.service import Result, Service, collect, effective_settings
from hllama.server.body import named
from hllama.validation import first_problem

log = logging.getLogger("hllama.server")

#: The response header that says which settings a request ran with, and which layer set each.
EFFECTIVE_HEADER = "X-Hllama-Effective"

#: The response header that says how many of the conversation's oldest turns were left out to fit its context.
DROPPED_HEADER = "X-Hllama-Turns-Dropped"


def resolve_request(service: Service, model: str, api: Overrides | dict[str, Any] | None = None) -> Resolved:
    """The alias a request names, with its overrides (an :class:`Overrides`, or OpenAI-style parameters)."""
    named(model)
    if isinstance(api, dict):
        try:
            api = Overrides.model_validate({"parameters": api})
        except ValidationError as exc:
            name, problem = first_problem(exc, schema=Overrides)
            raise InvalidOption(f"{name or 'parameters'}: {problem}") from None
    return service.resolve(model, api)


class Encoder:
    """How one API frames one answer. Streamed: :meth:`start`, :meth:`piece` for each piece, :meth:`end` with the
    result (or :meth:`error`), then :attr:`closing`; not streamed: :meth:`whole`. Subclasses hold what a stream
    must remember between pieces (an open block, a counter)."""

    media_type = "text/event-stream"
    closing = b""  # written last, after an error too (OpenAI's ``data: [DONE]``)

    def start(self, prompted: Prompted | None) -> Iterable[bytes]:
        """What a stream opens with; ``prompted``: what the prompt took, where it was built here."""
        return ()

    def piece(self, item: Any) -> Iterable[bytes]:
        raise NotImplementedError

    def end(self, result: Result) -> Iterable[bytes]:
        return ()

    def error(self, message: str) -> bytes:
        raise NotImplementedError

    def whole(self, text: str, result: Result) -> Any:
        """The body of an answer that does not stream (JSON-ready data)."""
        raise NotImplementedError


async def respond(events: AsyncIterator[Any], encoder: Encoder, *, stream: bool, resolved: Resolved | None = None
                  ) -> Response:
    """An answer (``str`` and :class:`Thought` pieces, then a :class:`Result`; or any items, for a progress
    stream) as the encoder frames it."""
    headers = {EFFECTIVE_HEADER: effective_settings(resolved)} if resolved is not None else {}
    first = await anext(events)  # loading, prompt building and the first token: failures here get a status
    prompted = None
    if isinstance(first, Prompted):
        prompted, first = first, await anext(events)
        if prompted.dropped_turns:
            headers[DROPPED_HEADER] = str(prompted.dropped_turns)
    if not stream:
        pieces, result = await collect(first, events)
        return JSONResponse(encoder.whole("".join(pieces), result), headers=headers)
    name = resolved.name if resolved is not None else "a stream"
    return StreamingResponse(_frames(first, events, encoder, name, prompted), media_type=encoder.media_type,
                             headers=headers)


_ENDED = object()


async def _frames(first: Any, events: AsyncIterator[Any], encoder: Encoder, name: str, prompted: Prompted | None
                  ) -> AsyncIterator[bytes]:
    try:
        for frame in encoder.start(prompted):
            yield frame
        item = first
        while not isinstance(item, Result) and item is not _ENDED:
            for frame in encoder.piece(item):
                yield frame
            item = await anext(events, _ENDED)
        if isinstance(item, Result):  # else a stream of items with no result at its end (pull's progress)
            for frame in encoder.end(item):
                yield frame
    except HllamaError as exc:
        yield encoder.error(str(exc))
    except Exception as exc:  # noqa: BLE001 - the stream has begun: the error must be a frame, not a status
        log.exception("unexpected error while streaming %s", name)
        yield encoder.error(f"{type(exc).__name__}: {exc}")
    finally:
        await events.aclose()
    if encoder.closing:
        yield encoder.closing

