"""Hot reload with real files, a real running server and real edits."""

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pexpect
import pytest

from hllama.aliases.modelfile import load_modelfile
from hllama.cli import main
from hllama.config import load_settings

from .conftest import chat_in_terminal, read_json_throughout
from .liveserver import live_server
from .tinymodel import CHATS, REPO_ID


def _write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text)


def _until(check, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.01)


def _parameters(url: str, name: str) -> str | None:
    response = httpx.post(f"{url}/api/show", json={"model": name})
    return response.json()["parameters"] if response.status_code == 200 else None


@pytest.fixture
def served(tiny_cache: Path, hllama_home: Path):
    folder = hllama_home / "modelfiles"
    folder.mkdir(parents=True)
    _write(folder, "tiny.yaml", f"from: {REPO_ID}\nparameters:\n  temperature: 0.1\n")
    with live_server(load_settings()) as url:
        yield url, folder


def test_each_edit_shows_without_a_restart(served):
    """How fast is bench/reload.py's job; here, only that every edit arrives."""
    url, folder = served
    for temperature in (0.2, 0.3, 0.4):
        _write(folder, "tiny.yaml", f"from: {REPO_ID}\nparameters:\n  temperature: {temperature}\n")
        wanted = f"temperature                    {temperature}"
        assert _until(lambda wanted=wanted: wanted in (_parameters(url, "tiny") or ""))
    assert json.loads(load_settings().registry_file.read_text())["aliases"]["tiny"]["modelfile"]["parameters"] == {
        "temperature": 0.4}


def test_a_broken_file_keeps_the_last_good_version_until_fixed(served, capsys):
    url, folder = served
    _write(folder, "tiny.yaml", f"from: {REPO_ID}\nparameters:\n  temperature: -5\n")
    error = f"{folder / 'tiny.yaml'}:3: parameters.temperature: input should be greater than or equal to 0 (got -5)"
    assert _until(lambda: httpx.post(f"{url}/api/show", json={"model": "tiny"}).json().get("error") == error)
    shown = httpx.post(f"{url}/api/show", json={"model": "tiny"}).json()
    assert "temperature                    0.1" in shown["parameters"]  # still the last good one
    chat = httpx.post(f"{url}/api/chat", json={"model": "tiny", "stream": False,
                                               "messages": [{"role": "user", "content": "Say hello."}]}, timeout=60)
    assert chat.status_code == 200
    assert main(["list"]) == 0
    assert f"invalid: {error} (alias 'tiny' keeps its last good version)" in capsys.readouterr().out
    _write(folder, "tiny.yaml", f"from: {REPO_ID}\nparameters:\n  temperature: 0.6\n")
    assert _until(lambda: "error" not in httpx.post(f"{url}/api/show", json={"model": "tiny"}).json())
    assert "temperature                    0.6" in _parameters(url, "tiny")


def test_rename_and_delete(served):
    url, folder = served
    (folder / "tiny.yaml").rename(folder / "renamed.yaml")
    assert _until(lambda: _parameters(url, "renamed") is not None and _parameters(url, "tiny") is None)
    (folder / "renamed.yaml").unlink()

    def names() -> set[str]:
        return {model["name"] for model in httpx.get(f"{url}/api/tags").json()["models"]}

    assert _until(lambda: "renamed:latest" not in names())
    assert httpx.post(f"{url}/api/show", json={"model": "renamed"}).status_code == 404


def test_a_burst_of_fifty_files_is_one_reload(served, caplog):
    url, folder = served
    caplog.set_level(logging.INFO, logger="hllama.server")
    for index in range(50):
        _write(folder, f"burst{index:02d}.toml", f'from = "{REPO_ID}"\n[parameters]\ntop_k = {index + 1}\n')
    assert _until(lambda: len(httpx.get(f"{url}/api/tags").json()["models"]) == 52, timeout=10)  # + the repo id
    reloads = [record for record in caplog.records if record.getMessage().startswith("modelfiles reloaded")]
    assert 1 <= len(reloads) <= 3, [record.getMessage() for record in reloads]
    assert sum(int(record.getMessage().split()[2]) for record in reloads) == 50
    assert "top_k                          50" in _parameters(url, "burst49")


def test_a_load_setting_change_reloads_once_and_waits_for_running_requests(served, caplog):
    url, folder = served
    caplog.set_level(logging.INFO, logger="hllama.runtime.scheduler")
    ask = {"model": "tiny", "stream": False, "messages": [{"role": "user", "content": CHATS[0][0]}],
           "options": {"temperature": 0}}
    assert httpx.post(f"{url}/api/chat", json=ask, timeout=60).json()["message"]["content"] == CHATS[0][1]
    with httpx.Client(timeout=60) as client:  # a request still running when the edit lands
        running = client.send(client.build_request("POST", f"{url}/api/generate", json={
            "model": "tiny", "prompt": CHATS[4][0], "options": {"temperature": 0}}), stream=True)
        lines = running.iter_lines()
        next(lines)
        _write(folder, "tiny.yaml", f"from: {REPO_ID}\nparameters:\n  temperature: 0.1\nload:\n  quantize: 8bit\n")
        time.sleep(0.3)
        rest = [json.loads(line) for line in lines]
        assert rest[-1]["done"] is True and "error" not in rest[-1]
        running.close()
    assert _until(lambda: httpx.get(f"{url}/api/ps").json()["models"] == [])  # retired once it finished
    reply = httpx.post(f"{url}/api/chat", json=ask, timeout=120).json()
    assert reply["done"] is True and reply["eval_count"] > 0 and reply["message"]["content"]  # the new load answers
    [running_model] = httpx.get(f"{url}/api/ps").json()["models"]
    assert running_model["details"]["quantization_level"] == "INT8"
    loads = [record for record in caplog.records if record.getMessage().startswith("loaded tiny")]
    assert len(loads) == 2


def test_two_writers_and_a_server_lose_nothing(served):
    url, folder = served
    registry = load_settings().registry_file
    writer = ("import sys\nfrom hllama.cli import main\nfor i in range(8):\n"
              f"    assert main(['create', '--alias', f'{{sys.argv[1]}}{{i}}', '--model', '{REPO_ID}']) == 0\n")
    with read_json_throughout(registry) as invalid:
        processes = [subprocess.Popen([sys.executable, "-c", writer, side], env=dict(os.environ))
                     for side in ("left", "right")]
        assert [process.wait(timeout=120) for process in processes] == [0, 0]
    assert invalid == []
    expected = {f"{side}{i}" for side in ("left", "right") for i in range(8)} | {"tiny"}
    assert _until(lambda: {m["name"].removesuffix(":latest") for m in httpx.get(f"{url}/api/tags").json()["models"]}
                  >= expected)
    assert set(json.loads(registry.read_text())["aliases"]) == expected


KILLED_WRITER = """
import sys
from hllama.cli import main
i = 0
while True:
    main(["create", "--alias", f"k{i % 7}", "--model", sys.argv[1], "--top-k", str(i % 50), "--force"])
    i += 1
"""


def test_sigkill_during_writes_leaves_nothing_corrupt(tiny_cache: Path, hllama_home: Path):
    folder = hllama_home / "modelfiles"
    settings = load_settings()
    random.seed(7)
    for _ in range(5):
        process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, REPO_ID], env=dict(os.environ),
                                   stdout=subprocess.DEVNULL)
        time.sleep(1.5 + random.random())
        process.send_signal(signal.SIGKILL)
        process.wait()
        if settings.registry_file.exists():
            json.loads(settings.registry_file.read_text())  # complete, or the old one: never half of one
        for path in folder.glob("*.yaml"):
            load_modelfile(path)  # every modelfile reads whole
    assert main(["list"]) == 0  # the next start rebuilds from the modelfiles
    aliases = json.loads(settings.registry_file.read_text())["aliases"]
    assert set(aliases) == {path.stem for path in folder.glob("*.yaml")}


def test_chat_picks_up_an_edit_between_turns(tiny_cache: Path, hllama_home: Path):
    assert main(["create", "--alias", "tiny", "--model", REPO_ID, "--temperature", "0"]) == 0
    path = hllama_home / "modelfiles" / "tiny.yaml"
    with chat_in_terminal("tiny") as child:
        child.expect_exact(">>> ")
        child.sendline("Say hello.")
        child.expect_exact("Hello there, my friend! How are you today?")
        child.expect_exact(">>> ")
        path.write_text(f"from: {REPO_ID}\nparameters:\n  temperature: 0\n  stop: [friend]\n")
        child.sendline("/clear")  # the trained answer needs a fresh context
        child.expect_exact(">>> ")
        child.sendline("Say hello.")
        child.expect_exact("(modelfile tiny.yaml changed: now using its new settings)")
        child.expect_exact("Hello there, my \r\n")
        child.expect_exact(">>> ")
        path.write_text(f"from: {REPO_ID}\nparameters:\n  temperature: -1\n")
        child.sendline("/clear")
        child.expect_exact(">>> ")
        child.sendline("Say hello.")
        child.expect_exact("(modelfile changed but is invalid, keeping its last good version:")
        child.expect_exact("Hello there, my \r\n")
        child.sendline("/bye")
        child.expect(pexpect.EOF)


def test_files_that_break_the_store_neither_stop_the_server_nor_its_watch(tiny_cache: Path, hllama_home: Path,
                                                                         caplog):
    """A lone surrogate, undecodable bytes, a huge file, a FIFO: the server starts, the watch goes on."""
    folder = hllama_home / "modelfiles"
    folder.mkdir(parents=True)
    _write(folder, "tiny.yaml", f"from: {REPO_ID}\n")
    _write(folder, "surrogate.yaml", f'from: {REPO_ID}\nsystem: "\\uD800"\n')
    (hllama_home / "registry.json").write_bytes(b"\xff" * 10)
    with live_server(load_settings()) as url:
        assert [model["name"] for model in httpx.get(f"{url}/api/tags").json()["models"]][0] == "tiny:latest"
        (folder / "bytes.yaml").write_bytes(b"from: a/b\nsystem: \xed\xa0\x80\n")
        (folder / "huge.yaml").write_text("from: a/b\n# " + "x" * 2_000_000 + "\n")
        os.mkfifo(folder / "pipe.yaml")
        _write(folder, "later.yaml", f"from: {REPO_ID}\n")
        assert _until(lambda: _parameters(url, "later") is not None)
        assert "surrogate" not in {model["name"] for model in httpx.get(f"{url}/api/tags").json()["models"]}
        assert httpx.request("DELETE", f"{url}/api/delete", json={"model": "surrogate"}).status_code == 200
        assert not (folder / "surrogate.yaml").exists()
    assert not [record for record in caplog.records if record.exc_info]
