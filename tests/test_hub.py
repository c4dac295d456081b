import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from hllama.models.hub import select_files

from .fakehub import FakeHub, FakeRepo
from .tinymodel import REPO_ID, REVISION

NEEDED = ["chat_template.jinja", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
          "tokenizer_config.json"]


def test_select_files_takes_what_transformers_needs():
    sizes = {name: 1 for name in [*NEEDED, "pytorch_model.bin", "pytorch_model.bin.index.json", "model.gguf",
                                  "onnx/model.onnx", "original/consolidated.safetensors", "tf_model.h5",
                                  "flax_model.msgpack", "README.md", ".gitattributes", "merges.txt",
                                  "tokenizer.model", "modeling_custom.py"]}
    assert list(select_files(sizes)) == sorted([*NEEDED, "merges.txt", "tokenizer.model", "modeling_custom.py"])
    legacy = {"config.json": 1, "pytorch_model.bin": 5, "pytorch_model.bin.index.json": 1}
    assert list(select_files(legacy)) == ["config.json", "pytorch_model.bin", "pytorch_model.bin.index.json"]


@pytest.fixture
def hub(tiny_model_dir: Path, tmp_path: Path):
    """A local Hub holding the tiny model (plus files a pull must skip), a gated copy, and nothing else."""
    remote = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, remote)
    for extra in ("model.Q4_K_M.gguf", "onnx/model.onnx", "original/consolidated.safetensors", "pytorch_model.bin"):
        (remote / extra).parent.mkdir(exist_ok=True)
        (remote / extra).write_bytes(b"\0" * 1000)
    repos = {REPO_ID: FakeRepo(remote, REVISION), "org/gated": FakeRepo(remote, REVISION, gated=True)}
    with FakeHub(repos) as server:
        yield server


def hllama(*argv: str, env: dict[str, str] | None = None, hub: FakeHub | None = None,
           stdin: str | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, **(env or {})}
    if hub is not None:
        environment["HF_ENDPOINT"] = hub.url
    return subprocess.run([sys.executable, "-m", "hllama", *argv], capture_output=True, text=True, env=environment,
                          input=stdin if stdin is not None else "", timeout=300)


def _snapshot() -> Path:
    return Path(os.environ["HF_HUB_CACHE"]) / "models--hllama-test--tiny-chat" / "snapshots" / REVISION


def test_pull_downloads_only_what_is_needed_after_saying_what_it_needs(hub: FakeHub):
    result = hllama("pull", REPO_ID, hub=hub)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"pulling {REPO_ID}"
    assert lines[1].startswith("6 files, ") and lines[1].endswith(f"to download (commit {REVISION[:12]})")
    assert lines[2].startswith("needs about 68.0 MB at float32: weights 394.5 KB, KV cache 524.3 KB for 256 tokens "
                               "x 4 conversations")  # num_parallel 4: each may fill its context
    assert lines[3].startswith("rule of thumb (1.5 x weight files): ")
    assert lines[4].startswith("memory budget ") and lines[4].endswith(": fits")
    assert lines[5] == f"success: {REPO_ID} is in {_snapshot()}"
    assert sorted(path.name for path in _snapshot().iterdir()) == NEEDED
    assert all(path.is_symlink() for path in _snapshot().iterdir())  # the Hub client's own layout
    assert not any("gguf" in request or "onnx" in request or ".bin" in request for request in hub.requests)

    listed = hllama("list")
    assert listed.returncode == 0
    row = listed.stdout.splitlines()[1]
    assert row.split()[:3] == [REPO_ID, REPO_ID, "float32"] and row.split()[-3:] == ["yes", "hub", "cache"]


def test_pull_asks_before_downloading_what_cannot_fit(hub: FakeHub):
    small = {"HLLAMA_MEMORY_BUDGET": "1MB"}
    result = hllama("pull", REPO_ID, hub=hub, env=small)
    assert result.returncode == 1
    assert "does not fit" in result.stdout
    assert result.stderr.strip().endswith("not downloaded (add --yes to download anyway)")
    assert not _snapshot().exists()
    assert hllama("pull", REPO_ID, "--yes", hub=hub, env=small).returncode == 0
    assert _snapshot().is_dir()


@pytest.mark.parametrize("repo, message", [
    ("org/missing", "Error: model 'org/missing' was not found on the Hugging Face Hub"),
    ("org/gated", "Error: 'org/gated' is gated: accept its terms on the model page, then log in with "
                  "'hf auth login' (or set HF_TOKEN)"),
])
def test_pull_errors_are_one_line(hub: FakeHub, repo: str, message: str):
    result = hllama("pull", repo, hub=hub)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in result.stderr


def test_pull_unknown_revision(hub: FakeHub):
    result = hllama("pull", REPO_ID, "--revision", "nope", hub=hub)
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        f"Error: revision 'nope' of '{REPO_ID}' was not found on the Hugging Face Hub")


def test_pull_without_network(hub: FakeHub):
    result = hllama("pull", REPO_ID, hub=hub, env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1
    assert result.stderr.strip().endswith("Error: cannot reach the Hugging Face Hub (HF_HUB_OFFLINE is set)")


def test_pull_of_a_model_complete_in_the_cache_succeeds_without_the_hub(hub: FakeHub, tiny_cache: Path):
    """As huggingface_hub's offline mode: nothing to fetch is a success, the Hub down or not."""
    for env in ({"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}):
        result = hllama("pull", REPO_ID, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[-1].endswith(f"{REPO_ID} is complete in the cache: {_snapshot()}")
    (_snapshot() / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}')
    result = hllama("pull", REPO_ID, env={"HF_HUB_OFFLINE": "1"})  # a shard missing: not complete
    assert result.returncode == 1 and "cannot reach the Hugging Face Hub" in result.stderr


def test_api_pull_of_a_cached_model_without_the_hub(tiny_cache: Path, monkeypatch: pytest.MonkeyPatch):
    from hllama.config import load_settings

    from .liveserver import live_server

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with live_server(load_settings(), watch=False) as url:
        pulled = httpx.post(f"{url}/api/pull", json={"model": REPO_ID, "stream": False}, timeout=60)
        assert pulled.status_code == 200 and pulled.json() == {"status": "success"}
        missing = httpx.post(f"{url}/api/pull", json={"model": "org/not-cached", "stream": False}, timeout=60)
        assert missing.status_code == 502 and "cannot reach" in missing.json()["error"]


def test_run_pulls_on_first_use(hub: FakeHub):
    result = hllama("run", REPO_ID, "Say hello.", "--temperature", "0", hub=hub)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"pulling {REPO_ID}"
    assert result.stdout.splitlines()[-1] == "Hello there, my friend! How are you today?"


def test_cache_scan_and_clear(tiny_cache: Path):
    scan = hllama("cache", "--scan")
    assert scan.returncode == 0
    assert scan.stdout.splitlines()[0].split() == ["REPO", "REVISION", "SIZE", "LAST", "USED", "NEEDS", "FITS"]
    assert scan.stdout.splitlines()[1].split()[:2] == [REPO_ID, "main"]
    assert scan.stdout.splitlines()[1].split()[-1] == "yes"

    refused = hllama("cache", "--clear")  # no terminal to confirm on
    assert refused.returncode == 1 and "nothing deleted" in refused.stderr
    assert _snapshot().is_dir()
    unknown = hllama("cache", "--clear", "org/other", "--yes")
    assert unknown.returncode == 1 and "not in the cache: org/other" in unknown.stderr

    cleared = hllama("cache", "--clear", REPO_ID, "--yes")
    assert cleared.returncode == 0 and cleared.stdout.startswith(f"deleted {REPO_ID}; freed ")
    assert not (tiny_cache / "models--hllama-test--tiny-chat").exists()
    assert hllama("cache", "--scan").stdout.splitlines()[1:] == [f"cache: {tiny_cache}"]


def test_list_hides_what_cannot_fit_unless_all(tiny_cache: Path):
    small = {"HLLAMA_MEMORY_BUDGET": "1MB"}
    hidden = hllama("list", env=small)
    assert hidden.stdout.splitlines()[1:] == ["(1 more too large for the memory budget; hllama list --all shows them)"]
    shown = hllama("list", "--all", env=small)
    assert shown.stdout.splitlines()[1].split()[-3:] == ["no", "hub", "cache"]


def test_show_describes_a_cached_model_that_is_no_alias(tiny_cache: Path):
    result = hllama("show", REPO_ID)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("  Model\n    architecture        llama\n    parameters          98.6K\n"
                             "    context length      256\n    embedding length    64\n    quantization        F32\n"
                             "    format              safetensors\n\n  Capabilities\n    completion\n\n")
    missing = hllama("show", "org/not-cached")
    assert missing.returncode == 1
    assert missing.stderr == "Error: model 'org/not-cached' not found, try pulling it first\n"
