import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "modelfiles"


@pytest.fixture(autouse=True)
def hllama_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty home and Hub cache, and no HLLAMA_*/OLLAMA_* settings from outside; the
    built-in alias is off, so that what a test lists is what it made."""
    for name in list(os.environ):
        if name.startswith(("HLLAMA_", "OLLAMA_")):
            monkeypatch.delenv(name)
    for name in ("HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("HLLAMA_HOME", str(home))
    monkeypatch.setenv("HLLAMA_BUILTIN_ALIASES", "false")  # on in tests/test_embedded.py, which are about it
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return home


@pytest.fixture
def modelfiles(hllama_home: Path) -> Path:
    folder = hllama_home / "modelfiles"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained tiny chat model as a plain folder, built once per test run."""
    from .tinymodel import build_model

    return build_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tool_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained to call ``get_weather`` (tests/tinymodel.py), built once per test run."""
    from .tinymodel import build_tool_model

    return build_tool_model(tmp_path_factory.mktemp("tool-model"))


@pytest.fixture(scope="session")
def vision_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llava with random weights and its processor (tests/tinymodel.py), built once per test run."""
    from .tinymodel import build_vision_model

    return build_vision_model(tmp_path_factory.mktemp("vision-model"))


@pytest.fixture(scope="session")
def thinking_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained to think before it answers (tests/tinymodel.py), built once per test run."""
    from .tinymodel import build_thinking_model

    return build_thinking_model(tmp_path_factory.mktemp("thinking-model"))


@pytest.fixture(scope="session")
def coder_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained to fill in the middle of one snippet of code, built once per test run."""
    from .tinymodel import build_coder_model

    return build_coder_model(tmp_path_factory.mktemp("coder-model"))


@pytest.fixture(scope="session")
def encoder_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT embedding model (random weights, CLS pooling), built once per test run."""
    from .tinymodel import build_encoder_model

    return build_encoder_model(tmp_path_factory.mktemp("encoder-model"))


@pytest.fixture
def tiny_cache(tiny_model_dir: Path, hllama_home: Path) -> Path:
    """This test's Hub cache holding the tiny model as ``hllama-test/tiny-chat``."""
    from .tinymodel import install_into_cache

    cache = Path(os.environ["HF_HUB_CACHE"])
    install_into_cache(tiny_model_dir, cache)
    return cache


@pytest.fixture(scope="session")
def tiny(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny model loaded once through the same code a user's model goes through, greedy by default."""
    from hllama.aliases.registry import Registry
    from hllama.aliases.resolve import Overrides, resolve
    from hllama.config import Settings
    from hllama.engine import load_model
    from hllama.models.hardware import memory_budget

    settings = Settings(home=tmp_path_factory.mktemp("tiny-home"))
    resolved = resolve(str(tiny_model_dir), settings=settings, registry=Registry(settings.modelfiles_dir),
                       cli=Overrides.model_validate({"parameters": {"temperature": 0}}))
    return load_model(resolved, budget=memory_budget(settings))


@contextmanager
def read_json_throughout(path: Path) -> Iterator[list[str]]:
    """Read ``path`` as JSON in a loop while the block runs; yields the list of parse errors seen."""
    errors: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                json.loads(path.read_text())
            except FileNotFoundError:
                pass
            except ValueError as exc:
                errors.append(str(exc))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        yield errors
    finally:
        stop.set()
        reader.join()


@contextmanager
def chat_in_terminal(*args: str) -> Iterator[Any]:
    """``hllama chat ARGS...`` in a pseudo-terminal, as a person would run it; closed on exit."""
    import sys

    import pexpect

    child = pexpect.spawn(sys.executable, ["-m", "hllama", "chat", *args], env=dict(os.environ), encoding="utf-8",
                          timeout=120)
    try:
        yield child
    finally:
        child.close()
