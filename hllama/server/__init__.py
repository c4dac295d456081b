"""The HTTP server: Ollama's API and OpenAI's, over one resolver, scheduler and engine."""

from hllama.server.app import build_service, create_app, serve

__all__ = ["build_service", "create_app", "serve"]
