"""The client commands' way to a running ``hllama serve``: its URL and one request, its errors as one line."""

from __future__ import annotations

from hllama.config import Settings, address, load_settings
from hllama.errors import ServerUnreachable


def server_url(settings: Settings) -> str:
    """Where the server of these settings answers (a wildcard bind is asked on loopback)."""
    host, port = settings.bind
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{address(host, port)}"


def call(method: str, path: str, body: dict | None = None, *, settings: Settings | None = None,
         timeout: float = 30) -> dict:
    """One request to the server at HLLAMA_HOST / OLLAMA_HOST; its errors as one line."""
    import json
    import urllib.error
    import urllib.request

    settings = settings or load_settings()
    url = f"{server_url(settings)}{path}"
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if settings.api_key is not None:
        headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise ServerUnreachable(str(message)) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServerUnreachable(f"could not connect to hllama at {url.rsplit(path, 1)[0]} ({reason}); "
                                "is 'hllama serve' running?") from None
