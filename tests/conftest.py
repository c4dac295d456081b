import os
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "modelfiles"


@pytest.fixture(autouse=True)
def hllama_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty home and Hub cache, and no HLLAMA_*/OLLAMA_* settings from outside."""
    for name in list(os.environ):
        if name.startswith(("HLLAMA_", "OLLAMA_")):
            monkeypatch.delenv(name)
    for name in ("HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("HLLAMA_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return home


@pytest.fixture
def modelfiles(hllama_home: Path) -> Path:
    folder = hllama_home / "modelfiles"
    folder.mkdir(parents=True)
    return folder
