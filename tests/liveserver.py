"""Run hllama's real server (uvicorn, in a thread) on a free port of 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

from hllama.config import Settings
from hllama.server import build_service, create_app


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def live_server(settings: Settings, *, watch: bool = True, **service_options) -> Iterator[str]:
    """Yields the base URL; stops the server (and unloads its models) on exit."""
    service = build_service(settings, **service_options)
    port = free_port()
    app = create_app(service, watch=watch)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def serve_process(env: dict[str, str], *args: str, log: Path | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """``hllama serve`` as its own process on a free port; yields it and its URL once it answers. ``log``: the file
    its output goes to (else nowhere)."""
    port = free_port()
    env = {**env, "HLLAMA_HOST": f"127.0.0.1:{port}"}
    output = log.open("wb") if log is not None else subprocess.DEVNULL
    process = subprocess.Popen([sys.executable, "-m", "hllama", "serve", *args], env=env,
                               stdout=output, stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("hllama serve did not start") from None
                time.sleep(0.1)
        yield process, url
    finally:
        process.terminate()
        process.wait(30)
        if log is not None:
            output.close()
