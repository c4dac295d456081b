"""The request log: answers of both APIs and the CLI kept in SQLite when asked, read back with ``hllama logs``."""

import json
import sqlite3
import time
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from hllama.cli import main
from hllama.config import load_settings
from hllama.runtime.requestlog import MIGRATIONS, Entry, RequestLog, connect, read

from .liveserver import live_server
from .tinymodel import CHATS, REPO_ID

GREEDY = {"temperature": 0}


def _logs(capsys, *args: str) -> list[dict]:
    capsys.readouterr()
    assert main(["logs", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_answers_of_both_apis_and_the_cli_are_kept(tiny_cache: Path, hllama_home: Path, monkeypatch, capsys):
    monkeypatch.setenv("HLLAMA_LOG_REQUESTS", "1")
    with live_server(load_settings(), watch=False) as url:
        ollama.Client(host=url).chat(REPO_ID, messages=[{"role": "user", "content": CHATS[0][0]}], options=GREEDY)
        openai.OpenAI(base_url=f"{url}/v1", api_key="unused").chat.completions.create(
            model=REPO_ID, messages=[{"role": "user", "content": CHATS[1][0]}], temperature=0)
    assert main(["run", REPO_ID, CHATS[2][0], "--temperature", "0"]) == 0

    entries = _logs(capsys, "-n", "10")
    assert [entry["response"] for entry in entries] == [CHATS[2][1], CHATS[1][1], CHATS[0][1]]  # newest first
    assert [entry["client"] for entry in entries] == ["cli", "127.0.0.1", "127.0.0.1"]
    newest = entries[0]
    assert newest["model"] == REPO_ID and newest["messages"][-1] == {"role": "user", "content": CHATS[2][0]}
    assert newest["done_reason"] == "stop" and newest["generated_tokens"] > 0 and newest["duration_ms"] > 0
    settings = json.loads(newest["settings"])
    assert settings["parameters"]["temperature"] == 0.0 and settings["sources"]["parameters.temperature"] == "cli"
    assert [entry["response"] for entry in _logs(capsys, "--search", "Paris")] == [CHATS[0][1]]
    assert len(_logs(capsys, "--since", "1h", "--model", REPO_ID)) == 3
    assert _logs(capsys, "--model", "someone/else") == []
    capsys.readouterr()
    assert main(["logs", "-n", "1"]) == 0
    assert CHATS[2][1] in capsys.readouterr().out
    assert main(["logs", "--clear", "-y"]) == 0 and _logs(capsys) == []


def test_the_log_is_off_unless_asked_for(tiny_cache: Path, hllama_home: Path):
    assert main(["run", REPO_ID, CHATS[0][0], "--temperature", "0"]) == 0
    assert not (hllama_home / "logs.db").exists()


def test_a_locked_database_loses_entries_not_answers(tiny_cache: Path, hllama_home: Path, monkeypatch):
    monkeypatch.setenv("HLLAMA_LOG_REQUESTS", "1")
    connect(hllama_home / "logs.db").close()
    blocker = sqlite3.connect(hllama_home / "logs.db")
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with live_server(load_settings(), watch=False) as url:
            reply = ollama.Client(host=url).chat(REPO_ID, messages=[{"role": "user", "content": CHATS[0][0]}],
                                                 options=GREEDY)
            assert reply.message.content == CHATS[0][1]
            deadline = time.monotonic() + 10
            while "hllama_request_log_dropped_total 1.0" not in httpx.get(f"{url}/metrics").text:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        blocker.rollback()
        blocker.close()
    assert read(hllama_home / "logs.db") == []


def test_retention_and_migrations(tmp_path: Path):
    path = tmp_path / "logs.db"
    db = sqlite3.connect(path)  # a database from before full-text search
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    MIGRATIONS[0][1](db)
    db.execute("INSERT INTO _migrations VALUES ('m001_initial', 0)")
    db.commit()
    db.close()
    log = RequestLog(path, retention=2)
    for number in range(3):
        log.record(Entry(model="m", alias=None, messages=[{"role": "user", "content": f"question {number}"}],
                         response=f"answer {number}", settings="{}"))
    log.close()
    assert [entry["response"] for entry in read(path)] == ["answer 2", "answer 1"]
    assert [entry["response"] for entry in read(path, search="question")] == ["answer 2", "answer 1"]
    with connect(path) as db:
        assert [row["name"] for row in db.execute("SELECT name FROM _migrations ORDER BY name")] == [
            "m001_initial", "m002_full_text_search"]
    with pytest.raises(Exception, match="--search"):
        read(path, search='"unbalanced')


def test_the_client_is_named_with_metrics_off(tiny_cache: Path, hllama_home: Path, monkeypatch, capsys):
    monkeypatch.setenv("HLLAMA_LOG_REQUESTS", "1")
    monkeypatch.setenv("HLLAMA_METRICS", "false")
    with live_server(load_settings(), watch=False) as url:
        ollama.Client(host=url).chat(REPO_ID, messages=[{"role": "user", "content": CHATS[0][0]}], options=GREEDY)
    assert [entry["client"] for entry in _logs(capsys)] == ["127.0.0.1"]
