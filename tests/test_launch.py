"""``hllama launch``: each agent's binary replaced by a stand-in that records its arguments, environment and the
configuration it would read."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from hllama.cli import main
from hllama.config import load_settings

from .liveserver import free_port, live_server
from .tinymodel import REPO_ID, TOOL_REPO_ID, install_into_cache

#: A stand-in agent: it writes what it was run with to $RECORD, as JSON.
STAND_IN = """#!{python}
import json, os, sys
config = {{}}
for variable, name in (("CODEX_HOME", "config.toml"), ("OPENCODE_CONFIG", "")):
    if variable in os.environ:
        path = os.path.join(os.environ[variable], name) if name else os.environ[variable]
        config[variable] = open(path).read()
json.dump({{"argv": sys.argv[1:], "env": {{key: value for key, value in os.environ.items()
          if key.startswith(("ANTHROPIC_", "CLAUDE_", "CODEX_", "OPENCODE_", "HLLAMA_API"))}}, "config": config}},
          open(os.environ["RECORD"], "w"))
"""


@pytest.fixture
def agents(tmp_path: Path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("claude", "codex", "opencode"):
        (folder / name).write_text(STAND_IN.format(python=sys.executable))
        (folder / name).chmod(0o755)
    return folder


@pytest.fixture
def url(tiny_cache: Path, tool_model_dir: Path, hllama_home: Path):
    install_into_cache(tool_model_dir, tiny_cache, repo_id=TOOL_REPO_ID)
    assert main(["create", "--alias", "agentic", "--model", TOOL_REPO_ID]) == 0
    assert main(["create", "--alias", "plain", "--model", REPO_ID]) == 0
    with live_server(load_settings(), watch=False) as base:
        yield base


def _launch(agents: Path, record: Path, *words: str, host: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{agents}{os.pathsep}{os.environ['PATH']}", "RECORD": str(record),
           "HLLAMA_HOST": host}
    return subprocess.run([sys.executable, "-m", "hllama", "launch", *words], env=env, capture_output=True,
                          text=True, timeout=120)


def test_claude_code_runs_on_the_alias_with_what_its_docs_set(url: str, agents: Path, tmp_path: Path):
    record = tmp_path / "claude.json"
    done = _launch(agents, record, "claude", "--model", "agentic", "--", "-p", "list the files",
                   host=url.removeprefix("http://"))
    assert done.returncode == 0, done.stderr
    seen = json.loads(record.read_text())
    assert seen["argv"] == ["-p", "list the files"]
    assert seen["env"]["ANTHROPIC_BASE_URL"] == url and seen["env"]["ANTHROPIC_MODEL"] == "agentic"
    assert seen["env"]["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "agentic" and seen["env"]["ANTHROPIC_AUTH_TOKEN"]
    # the tiny model takes tools but its context (256) is far from what Claude Code's prompt needs: said, with how
    assert "tools" not in done.stderr
    assert "runs with a context of 256 tokens; claude needs about 32768: set 'num_ctx: 32768'" in done.stderr


def test_codex_and_opencode_get_a_provider_for_the_server(url: str, agents: Path, tmp_path: Path):
    host = url.removeprefix("http://")
    record = tmp_path / "codex.json"
    assert _launch(agents, record, "codex", "--model", "agentic", "--", "exec", "hi", host=host).returncode == 0
    seen = json.loads(record.read_text())
    config = tomllib.loads(seen["config"]["CODEX_HOME"])
    assert seen["argv"] == ["exec", "hi"] and config["model"] == "agentic" and config["model_provider"] == "hllama"
    assert config["model_providers"]["hllama"] == {"name": "hllama", "base_url": f"{url}/v1",
                                                   "wire_api": "responses", "env_key": "HLLAMA_API_KEY"}
    assert seen["env"]["HLLAMA_API_KEY"]
    record = tmp_path / "opencode.json"
    done = _launch(agents, record, "opencode", "--model", "plain", host=host)
    seen = json.loads(record.read_text())
    provider = json.loads(seen["config"]["OPENCODE_CONFIG"])
    assert provider["model"] == "hllama/plain" and seen["argv"] == []
    assert provider["provider"]["hllama"]["options"]["baseURL"] == f"{url}/v1"
    assert "plain" in provider["provider"]["hllama"]["models"]
    assert "'plain' has a chat template with no place for tools" in done.stderr  # what it lacks, and what to do


def test_config_prints_what_it_would_set_and_runs_nothing(agents: Path, tmp_path: Path):
    record = tmp_path / "nothing.json"
    done = _launch(agents, record, "claude", "--config", "--model", "agentic", host=f"127.0.0.1:{free_port()}")
    assert done.returncode == 0 and not record.exists()
    assert "ANTHROPIC_BASE_URL=http://127.0.0.1:" in done.stdout and "ANTHROPIC_MODEL=agentic" in done.stdout


def test_an_agent_not_installed_is_one_line_saying_how(url: str, tmp_path: Path):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent), "HLLAMA_HOST": url.removeprefix("http://")}
    done = subprocess.run([sys.executable, "-m", "hllama", "launch", "codex", "--model", "agentic"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == ("Error: codex is not installed (or not on PATH): "
                                                    "npm install -g @openai/codex")


def test_a_server_is_started_where_none_answers(agents: Path, tmp_path: Path, tiny_cache: Path):
    host = f"127.0.0.1:{free_port()}"
    record = tmp_path / "started.json"
    done = _launch(agents, record, "opencode", "--model", REPO_ID, host=host)
    started = re.search(r"started hllama serve at (\S+) \(pid (\d+)", done.stderr)
    assert started, done.stderr
    try:
        assert done.returncode == 0, done.stderr
        provider = json.loads(json.loads(record.read_text())["config"]["OPENCODE_CONFIG"])
        assert provider["provider"]["hllama"]["options"]["baseURL"] == f"http://{host}/v1" == started[1] + "/v1"
    finally:
        os.kill(int(started[2]), signal.SIGTERM)
