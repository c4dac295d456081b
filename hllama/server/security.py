"""Who may talk to the server: CORS for local origins only, Host checks on loopback, an optional API key.

A page on any website can make a browser send requests to ``127.0.0.1:11434``. CORS keeps other
origins from reading the answers; the Host check stops DNS rebinding (a hostile name that resolves
to 127.0.0.1) from reaching a server bound to loopback at all. The API key is for a server others
can reach: every route but the health check ``/`` then needs ``Authorization: Bearer <key>`` (or Anthropic's
``x-api-key: <key>``).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Callable

from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hllama.errors import RequestTooLarge

#: Ollama's defaults: local web pages on any port, and desktop or editor webviews.
DEFAULT_ORIGINS = ("http://localhost", "https://localhost", "http://127.0.0.1", "https://127.0.0.1",
                   "http://0.0.0.0", "https://0.0.0.0", "app://*", "file://*", "tauri://*", "vscode-webview://*")


def origin_pattern(extra: list[str]) -> str:
    """One regular expression for every allowed origin; ``*`` is a wildcard, a bare host allows any port."""
    parts = []
    for origin in (*DEFAULT_ORIGINS, *extra):
        pattern = re.escape(origin).replace(r"\*", ".*")
        parts.append(pattern if "*" in origin else f"{pattern}(:[0-9]+)?")
    return "^(" + "|".join(parts) + ")$"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(bind_host: str, *, has_key: bool) -> str | None:
    if is_loopback(bind_host) or has_key:
        return None
    return (f"serving on {bind_host} without an API key: anyone who can reach this address can use it "
            "(set HLLAMA_API_KEY)")


#: Makes the error response for a path, in the shape that path's API uses: (path, status, message, **extra).
Refuse = Callable[..., Response]


class LoopbackHostOnly:
    """On a loopback bind, answer 403 to a request whose Host names anything but this machine."""

    def __init__(self, app: ASGIApp, *, refuse: Refuse) -> None:
        self.app = app
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if host and not is_loopback(name.strip("[]")):
                response = self.refuse(scope["path"], 403, "forbidden: this server only answers requests for localhost")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RefuseForeignOrigins:
    """403 on every route for a request whose ``Origin`` is not allowed, as Ollama's origin check does.

    CORS alone only hides answers: a page may still *send* a ``no-cors`` POST (a form, ``text/plain``) that
    creates an alias or starts a download. Browsers name the page's origin on such requests; tools do not.
    """

    def __init__(self, app: ASGIApp, *, allowed: str, refuse: Refuse) -> None:
        self.app = app
        self.allowed = re.compile(allowed)
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            origin = dict(scope["headers"]).get(b"origin")
            if origin is not None and not self.allowed.match(origin.decode("latin-1")):
                response = self.refuse(scope["path"], 403, "forbidden: requests from this web origin are not "
                                       "allowed (add it to HLLAMA_ORIGINS to allow it)")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class LimitBodySize:
    """413 for a request body over ``limit`` bytes, told by Content-Length or counted as it arrives."""

    def __init__(self, app: ASGIApp, *, limit: int, refuse: Refuse) -> None:
        self.app = app
        self.limit = limit
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            await self.refuse(scope["path"], 413, self._message())(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise RequestTooLarge(self._message())
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"request body too large: the limit is {self.limit} bytes (max_request_size)"


class RequireApiKey:
    """401 for a request without the key; CORS preflights and ``/`` (clients probe it) stay open."""

    def __init__(self, app: ASGIApp, *, key: str, refuse: Refuse, open_paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.expected = f"Bearer {key}".encode()
        self.key = key.encode()
        self.refuse = refuse
        self.open_paths = open_paths

    def _open(self, scope: Scope) -> bool:
        client = scope.get("client")
        return scope["path"] in self.open_paths and client is not None and is_loopback(client[0])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] != "OPTIONS" and scope["path"] != "/" \
                and not self._open(scope):
            headers = dict(scope["headers"])
            bearer = hmac.compare_digest(headers.get(b"authorization", b""), self.expected)
            anthropic = hmac.compare_digest(headers.get(b"x-api-key", b""), self.key)  # Anthropic's clients
            if not (bearer or anthropic):
                response = self.refuse(
                    scope["path"], 401, "unauthorized: send the server's API key as 'Authorization: Bearer <key>'",
                    code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def add_access_control(app, *, bind_host: str, origins: list[str], api_key: str | None, refuse: Refuse,
                       max_body: int, open_paths: tuple[str, ...] = ()) -> None:
    """Outermost first: the Host check, the origin check, CORS (so even a 401 carries its headers), the key,
    then the body's size. ``open_paths`` need no key from a client on loopback (a metrics scraper)."""
    app.add_middleware(LimitBodySize, limit=max_body, refuse=refuse)
    if api_key is not None:
        app.add_middleware(RequireApiKey, key=api_key, refuse=refuse, open_paths=open_paths)
    allowed = origin_pattern(origins)
    app.add_middleware(CORSMiddleware, allow_origin_regex=allowed, allow_methods=["*"],
                       allow_headers=["*"], expose_headers=["X-Hllama-Effective"])
    app.add_middleware(RefuseForeignOrigins, allowed=allowed, refuse=refuse)
    if is_loopback(bind_host):
        app.add_middleware(LoopbackHostOnly, refuse=refuse)
