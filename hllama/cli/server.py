"""``serve``: the Ollama-compatible HTTP server."""

from __future__ import annotations

import argparse
from pathlib import Path

from hllama.config import OLLAMA_ENV, Settings, load_settings, parse_host

_ENVIRONMENT = "\n".join(
    [f"  HLLAMA_{name.upper():<22} {info.description}" for name, info in Settings.model_fields.items()]
    + [f"  {variable:<29} read when HLLAMA_{name.upper()} is not set" for name, variable in OLLAMA_ENV.items()])


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve", help="serve Ollama's API and OpenAI's on 127.0.0.1:11434",
        description="Serve Ollama's native API (/api/*) and OpenAI's (/v1/*). Models load on first use.",
        epilog=f"environment:\n{_ENVIRONMENT}", formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--host", help="address to bind, or HOST:PORT (default 127.0.0.1; HLLAMA_HOST, OLLAMA_HOST)")
    serve.add_argument("--port", type=int, help="port (default 11434)")
    serve.add_argument("--modelfiles", type=Path, metavar="DIR", help="the modelfiles folder to serve")
    serve.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    settings = load_settings(**({"modelfiles": args.modelfiles} if args.modelfiles else {}))
    host, port = settings.bind
    if args.host:
        host, given_port = parse_host(args.host)
        port = given_port if ":" in args.host.split("]")[-1] else port
    if args.port:
        port = args.port
    from hllama.server import serve

    serve(settings, host=host, port=port)
    return 0
