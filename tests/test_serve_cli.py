"""``hllama serve``, ``ps`` and ``stop`` as separate processes, the way a user runs them."""

import os
from pathlib import Path

import httpx
import psutil
import pytest

from hllama.cli import main

from .liveserver import free_port, serve_process
from .tinymodel import REPO_ID


@pytest.fixture
def served(tiny_cache: Path, hllama_home: Path, monkeypatch: pytest.MonkeyPatch):
    assert main(["create", "--alias", "tiny", "--model", REPO_ID, "--temperature", "0"]) == 0
    with serve_process(dict(os.environ)) as (process, url):
        monkeypatch.setenv("HLLAMA_HOST", url.removeprefix("http://"))  # where ps and stop look for it
        yield process, url


def test_serve_binds_to_loopback_only(served):
    process, url = served
    assert httpx.get(url).text == "Ollama is running"
    listening = [connection.laddr for connection in psutil.Process(process.pid).net_connections(kind="inet")
                 if connection.status == psutil.CONN_LISTEN]
    assert [address.ip for address in listening] == ["127.0.0.1"]


def test_ps_and_stop_talk_to_the_server(served, capsys):
    _, url = served
    httpx.post(f"{url}/api/generate", json={"model": "tiny", "prompt": ""}, timeout=120)
    assert main(["ps"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    assert out[1].startswith("tiny:latest") and "100% CPU" in out[1] and out[1].endswith("seconds from now")
    assert main(["stop", "tiny"]) == 0
    assert httpx.get(f"{url}/api/ps").json() == {"models": []}


def test_client_commands_without_a_server(capsys, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HLLAMA_HOST", f"127.0.0.1:{free_port()}")
    assert main(["ps"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: could not connect to hllama at http://127.0.0.1:") and err.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["serve", "--port", "99999"], "Error: argument --port: invalid port '99999'"),
    (["serve", "--host", "a:b:c"], "Error: invalid host 'a:b:c'"),
])
def test_serve_refuses_bad_addresses(capsys, argv, message):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code in (1, 2)
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
