"""``hllama serve``, ``ps`` and ``stop`` as separate processes, the way a user runs them."""

import os
import re
from pathlib import Path

import httpx
import psutil
import pytest

from hllama.cli import main
from hllama.units import format_bytes

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
    assert out[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "RUNNING", "QUEUED", "UNTIL"]
    assert out[1].startswith("tiny:latest") and "100% CPU" in out[1] and out[1].endswith("seconds from now")
    assert out[1].split()[-6:-4] == ["0", "0"]  # running, queued
    [model] = httpx.get(f"{url}/api/ps").json()["models"]
    assert f"{format_bytes(model['size'])} of {format_bytes(model['size_reserved'])}" in out[1]  # measured, reserved
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


@pytest.fixture
def endless_served(tiny_model_dir: Path, tiny_cache: Path, hllama_home: Path, tmp_path: Path):
    from .tinymodel import endless_variant, install_into_cache

    install_into_cache(endless_variant(tiny_model_dir, tmp_path / "endless"), tiny_cache,
                       repo_id="hllama-test/tiny-endless")
    assert main(["create", "--alias", "endless", "--model", "hllama-test/tiny-endless"]) == 0
    with serve_process(dict(os.environ)) as (process, url):
        yield process, url


def _start_endless(url: str, client: httpx.Client):
    request = client.build_request("POST", f"{url}/api/generate", json={
        "model": "endless", "prompt": "hi", "options": {"num_predict": 100000, "temperature": 0}})
    response = client.send(request, stream=True)
    lines = response.iter_lines()
    assert '"done":false' in next(lines)
    return response, lines


def test_sigterm_cancels_running_generations_and_exits_promptly(endless_served):
    import signal
    import time

    process, url = endless_served
    with httpx.Client(timeout=60) as client:
        _response, lines = _start_endless(url, client)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        rest = list(lines)  # the answer ends: its last line says so, as when its client leaves
        assert process.wait(timeout=15) == -signal.SIGTERM  # uvicorn ends by the signal it caught, as a shell expects
        assert time.monotonic() - started < 6
    assert '"done":true' in rest[-1]


def test_a_second_signal_exits_at_once(endless_served):
    import signal
    import socket
    import time

    process, url = endless_served
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as slow:  # a request whose body never comes holds shutdown
        slow.sendall(b"POST /api/show HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert process.poll() is None  # still waiting (up to 3 s) for the slow request
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 128 + signal.SIGTERM
        assert time.monotonic() - started < 2


def test_serve_where_a_server_listens_already_is_one_line(tmp_path: Path):
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "hllama", "serve", "--port", str(port)], capture_output=True,
                                text=True, timeout=60, env=dict(os.environ))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(f"Error: cannot listen on 127.0.0.1:{port}: the address is already in use")
    assert "--port" in result.stderr and "hllama ps" in result.stderr and result.stderr.count("\n") == 1


def test_the_server_logs_each_load_and_unload(tiny_cache: Path, tmp_path: Path):
    assert main(["create", "--alias", "tiny", "--model", REPO_ID, "--temperature", "0"]) == 0
    log = tmp_path / "serve.log"
    with serve_process(dict(os.environ), log=log) as (_, url):
        httpx.post(f"{url}/api/generate", json={"model": "tiny", "prompt": ""}, timeout=120)
        httpx.post(f"{url}/api/generate", json={"model": "tiny", "keep_alive": 0}, timeout=120)
    lines = log.read_text().splitlines()
    [loaded] = [line for line in lines if "loaded tiny" in line and "unloaded" not in line]
    [unloaded] = [line for line in lines if "unloaded tiny" in line]
    assert re.fullmatch(r"INFO: loaded tiny \(float32, [\d.]+ [kM]B\) in \d+\.\d s", loaded), loaded
    assert re.fullmatch(r"INFO: unloaded tiny \(float32, [\d.]+ [kM]B\) in \d+\.\d s", unloaded), unloaded
