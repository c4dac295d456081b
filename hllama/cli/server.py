"""``serve``: the Ollama-compatible HTTP server."""

from __future__ import annotations

import argparse
from pathlib import Path

from hllama.cli.client import call
from hllama.config import OLLAMA_ENV, Settings, load_settings, parse_host
from hllama.errors import InvalidOption

_ENVIRONMENT = "\n".join(
    [f"  HLLAMA_{name.upper():<22} {info.description}" for name, info in Settings.model_fields.items()]
    + [f"  {variable:<29} read when HLLAMA_{name.upper()} is not set" for name, variable in OLLAMA_ENV.items()])


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve", help="serve Ollama's API and OpenAI's on 127.0.0.1:11434",
        description="Serve Ollama's native API (/api/*) and OpenAI's (/v1/*). Models load on first use.",
        epilog=f"environment:\n{_ENVIRONMENT}", formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--host", help="address to bind, or HOST:PORT (default 127.0.0.1; HLLAMA_HOST, OLLAMA_HOST)")
    serve.add_argument("--port", type=_port, help="port (default 11434)")
    serve.add_argument("--modelfiles", type=Path, metavar="DIR", help="the modelfiles folder to serve")
    serve.set_defaults(run=run_serve)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: use a number from 1 to 65535")
    return int(text)


def run_serve(args: argparse.Namespace) -> int:
    settings = load_settings(**({"modelfiles": args.modelfiles} if args.modelfiles else {}))
    host, port = settings.bind
    if args.host:
        try:
            host, given_port = parse_host(args.host)
        except ValueError as exc:
            raise InvalidOption(str(exc)) from None
        port = given_port if ":" in args.host.split("]")[-1] else port
    if args.port:
        port = args.port
    from hllama.server import serve

    serve(settings, host=host, port=port)
    return 0


def register_client(commands: argparse._SubParsersAction) -> None:
    ps = commands.add_parser("ps", help="list the models a running server has loaded")
    ps.set_defaults(run=run_ps)
    stop = commands.add_parser("stop", help="unload a model from a running server")
    stop.add_argument("model")
    stop.set_defaults(run=run_stop)


def run_ps(args: argparse.Namespace) -> int:
    from datetime import datetime

    from hllama.cli.table import format_table
    from hllama.units import format_bytes

    rows = []
    for model in call("GET", "/api/ps")["models"]:
        until = datetime.fromisoformat(model["expires_at"])
        seconds = (until - datetime.now(until.tzinfo)).total_seconds()
        until_text = "Forever" if seconds > 3 * 365 * 86400 else f"{max(0, int(seconds))} seconds from now"
        if "loading" in model:
            until_text = f"loading ({model['loading']['seconds']:.0f} s)"
        size = format_bytes(model["size"])
        if model.get("size_reserved"):
            size += f" of {format_bytes(model['size_reserved'])}"
        rows.append((model["name"], model["digest"][:12], size,
                     "100% GPU" if model["size_vram"] else "100% CPU", str(model.get("context_length") or "-"),
                     str(model.get("requests_running", "-")), str(model.get("requests_waiting", "-")), until_text))
    print(format_table(("NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "RUNNING", "QUEUED", "UNTIL"), rows))
    return 0


def run_stop(args: argparse.Namespace) -> int:
    call("POST", "/api/generate", {"model": args.model, "keep_alive": 0})
    return 0
