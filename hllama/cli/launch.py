"""``hllama launch AGENT``: a coding agent (Claude Code, Codex, OpenCode) on a local alias, set up as its own docs
set it up for a local server.

It finds the server (or starts one), checks the alias (a chat template that takes tools, a context large enough for
the agent's prompt) and says what to change where it falls short, writes or passes the agent's configuration, and
runs the agent in this terminal. ``--config`` prints what it would set instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hllama.cli.client import call, server_url
from hllama.config import Settings, load_settings
from hllama.errors import InvalidOption, ServerUnreachable
from hllama.fsutil import atomic_write_text


@dataclass(frozen=True)
class Agent:
    binary: str
    install: str  # how to install it
    context: int  # tokens its prompt needs before the user's first word, with room to work
    api: str  # the API it speaks to the server


AGENTS = {
    # Claude Code's system prompt and 20-odd tools come to about 20k tokens
    "claude": Agent("claude", "npm install -g @anthropic-ai/claude-code", 32768, "Anthropic's /v1/messages"),
    # Codex's instructions and tools come to about 6k tokens
    "codex": Agent("codex", "npm install -g @openai/codex", 16384, "OpenAI's /v1/responses"),
    # OpenCode's system prompt and tools come to about 10k tokens
    "opencode": Agent("opencode", "npm install -g opencode-ai", 16384, "OpenAI's /v1/chat/completions"),
}

#: How long a server started here may take to answer.
START_TIMEOUT = 60.0


def register(commands: argparse._SubParsersAction) -> None:
    launch = commands.add_parser("launch", help="run a coding agent (claude, codex, opencode) on a local alias",
                                 epilog="Words after -- go to the agent: hllama launch claude -- -p 'hello'")
    launch.add_argument("agent", choices=sorted(AGENTS), help="the agent to run")
    launch.add_argument("--model", default="smollm2", help="the alias it uses (default: smollm2)")
    launch.add_argument("--config", action="store_true", help="print what it would set, and run nothing")
    launch.set_defaults(run=run_launch, passed=[])  # words after --, for the agent: hllama launch claude -- -p hi


def run_launch(args: argparse.Namespace) -> int:
    settings = load_settings()
    agent = AGENTS[args.agent]
    url = server_url(settings) if args.config else _running_server(settings)
    if not args.config:
        for warning in _shortfalls(args.model, agent, settings):
            print(f"Warning: {warning}", file=sys.stderr)
    env, files = _configuration(args.agent, args.model, url, settings)
    if args.config:
        for name, value in env.items():
            print(f"{name}={value}")
        for path, text in files.items():
            print(f"\n# {path}\n{text}", end="")
        return 0
    binary = shutil.which(agent.binary)
    if binary is None:
        raise InvalidOption(f"{agent.binary} is not installed (or not on PATH): {agent.install}")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    os.execve(binary, [agent.binary, *args.passed], {**os.environ, **env})  # the agent takes over this terminal
    return 0  # pragma: no cover - execve does not return


def _running_server(settings: Settings) -> str:
    """The server's URL; one is started (in the background, its log under HLLAMA_HOME) where none answers."""
    url = server_url(settings)
    try:
        call("GET", "/api/version", settings=settings, timeout=5)
        return url
    except ServerUnreachable:
        pass
    log_path = settings.home / "logs" / "serve.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "hllama", "serve"], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)  # outlives this command
    from hllama.cli.spinner import spinner

    with spinner(f"starting hllama serve at {url}"):
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                call("GET", "/api/version", settings=settings, timeout=5)
                break
            except ServerUnreachable:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise ServerUnreachable(f"hllama serve did not start; its log is {log_path}") from None
                time.sleep(0.2)
    print(f"started hllama serve at {url} (pid {process.pid}, log {log_path})", file=sys.stderr)
    return url


def _shortfalls(model: str, agent: Agent, settings: Settings) -> list[str]:
    """What in the alias keeps the agent from working, each with what to change."""
    shown = call("POST", "/api/show", {"model": model}, settings=settings)
    problems = []
    elsewhere = "upstream.url" in (shown.get("model_info") or {})  # its engine's template is not known here
    if not elsewhere and "tools" not in shown.get("capabilities", []):
        problems.append(f"'{model}' has a chat template with no place for tools, and {agent.binary} works by "
                        "calling tools: choose a model whose template takes them (hllama show ALIAS lists 'tools')")
    context = _context_of(shown)
    if context is not None and context < agent.context:
        problems.append(f"'{model}' runs with a context of {context} tokens; {agent.binary} needs about "
                        f"{agent.context}: set 'num_ctx: {agent.context}' under parameters in its modelfile "
                        f"(or choose a model trained for a longer context)")
    return problems


def _context_of(shown: dict) -> int | None:
    """The context an alias runs in, as ``/api/show`` says: its ``num_ctx`` within its model's own (a request
    never runs past what the model was trained on)."""
    asked = [int(value.strip()) for name, _, value in (line.partition(" ") for line in
                                                       str(shown.get("parameters", "")).splitlines())
             if name == "num_ctx" and value.strip().isdigit()]
    own = [value for key, value in (shown.get("model_info") or {}).items()
           if key.endswith(".context_length") and isinstance(value, int)]
    return min([*asked, *own]) if asked or own else None


def _configuration(agent: str, model: str, url: str, settings: Settings) -> tuple[dict[str, str], dict[Path, str]]:
    """The environment the agent runs with and the files it reads, as each agent's docs say for a local server."""
    key = settings.api_key.get_secret_value() if settings.api_key is not None else "hllama"
    if agent == "claude":
        return {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_AUTH_TOKEN": key, "ANTHROPIC_MODEL": model,
                "ANTHROPIC_DEFAULT_HAIKU_MODEL": model, "ANTHROPIC_DEFAULT_SONNET_MODEL": model,
                "ANTHROPIC_DEFAULT_OPUS_MODEL": model, "CLAUDE_CODE_SUBAGENT_MODEL": model,
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}, {}
    folder = settings.home / "launch" / agent
    if agent == "codex":
        config = (f"model = {json.dumps(model)}\nmodel_provider = \"hllama\"\n\n[model_providers.hllama]\n"
                  f"name = \"hllama\"\nbase_url = {json.dumps(url + '/v1')}\nwire_api = \"responses\"\n"
                  "env_key = \"HLLAMA_API_KEY\"\n")
        return {"CODEX_HOME": str(folder), "HLLAMA_API_KEY": key}, {folder / "config.toml": config}
    document = {"$schema": "https://opencode.ai/config.json", "model": f"hllama/{model}",
                "provider": {"hllama": {"npm": "@ai-sdk/openai-compatible", "name": "hllama",
                                        "options": {"baseURL": f"{url}/v1", "apiKey": key},
                                        "models": {model: {"name": model, "tool_call": True}}}}}
    path = folder / "opencode.json"
    return {"OPENCODE_CONFIG": str(path)}, {path: json.dumps(document, indent=2) + "\n"}
