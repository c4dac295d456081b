import io
import json
import sys
from pathlib import Path

import pexpect
import pytest

from hllama.cli import main

from .conftest import chat_in_terminal
from .tinymodel import CHATS, ENCODER_REPO_ID, REPO_ID, THINKING_REPO_ID, THOUGHT, install_into_cache


@pytest.fixture
def tiny_alias(tiny_cache: Path, hllama_home: Path) -> str:
    """An alias with defaults a flag can override: greedy, a stop string, a token limit."""
    assert main(["create", "--alias", "tiny", "--model", REPO_ID, "--temperature", "0", "--stop", "friend",
                 "--max-new-tokens", "40"]) == 0
    return "tiny"


def run(capsys, monkeypatch, *argv: str, stdin: str | None = None) -> tuple[int, str, str]:
    capsys.readouterr()
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_uses_the_alias_defaults(capsys, monkeypatch, tiny_alias):
    assert run(capsys, monkeypatch, "run", tiny_alias, "Say hello.") == (0, "Hello there, my \n", "")


def test_flags_override_the_alias(capsys, monkeypatch, tiny_alias):
    question, answer = CHATS[4]
    code, out, _ = run(capsys, monkeypatch, "run", tiny_alias, question, "--stop", "robot", "--max-new-tokens", "60")
    assert (code, out) == (0, answer[: answer.index("robot")] + "\n")
    code, out, _ = run(capsys, monkeypatch, "run", tiny_alias, question, "--max-new-tokens", "3")
    assert len(out.strip()) < len(answer) / 3


def test_a_prompt_piped_on_stdin(capsys, monkeypatch, tiny_alias):
    assert run(capsys, monkeypatch, "run", tiny_alias, stdin="Count to five.\n") == (
        0, "One, two, three, four, five.\n", "")


def test_input_file_is_the_first_message(capsys, monkeypatch, tiny_alias, tmp_path: Path):
    question = tmp_path / "question.txt"
    question.write_text("What is the capital of France?")
    code, out, _ = run(capsys, monkeypatch, "chat", tiny_alias, "--input-file", str(question), stdin="")
    assert (code, out) == (0, "The capital of France is Paris.\n")


def test_an_input_file_is_read_as_stdin_is(capsys, monkeypatch, tiny_alias, tmp_path: Path):
    """A file's trailing newline (every editor writes one) is stripped, as piped text is: the same answer."""
    question = tmp_path / "question.txt"
    question.write_text("Count to five.\n\n")
    from_file = run(capsys, monkeypatch, "run", tiny_alias, "--input-file", str(question), "--verbose")
    piped = run(capsys, monkeypatch, "run", tiny_alias, "--verbose", stdin="Count to five.\n\n")
    assert from_file[1] == piped[1] == "One, two, three, four, five.\n"

    def prompt_tokens(result):
        return [line for line in result[2].splitlines() if line.startswith("prompt eval count")]

    assert prompt_tokens(from_file) == prompt_tokens(piped)


def test_history_round_trip(capsys, monkeypatch, tiny_alias, tmp_path: Path):
    history = tmp_path / "talk.json"
    first = run(capsys, monkeypatch, "run", tiny_alias, "What is the capital of France?", "--history", str(history),
                "--verbose")
    assert first[1] == "The capital of France is Paris.\n"
    saved = json.loads(history.read_text())
    assert saved == [{"role": "user", "content": "What is the capital of France?"},
                     {"role": "assistant", "content": "The capital of France is Paris."}]
    second = run(capsys, monkeypatch, "run", tiny_alias, "Say hello.", "--history", str(history), "--verbose")
    assert len(json.loads(history.read_text())) == 4
    prompt_tokens = [int(line.split()[3]) for result in (first, second) for line in result[2].splitlines()
                     if line.startswith("prompt eval count")]
    assert prompt_tokens[1] > prompt_tokens[0] + 15  # the earlier turn went into the prompt


@pytest.mark.parametrize("argv, message", [
    (["run", "nope", "hi"], "Error: model 'nope' not found; run 'hllama list' to see the aliases"),
    (["run", "tiny", "Say hello.", "--ctx", "5"], "Error: the prompt needs"),
    (["run", "tiny", "hi", "--temperature", "-1"], "Error: --temperature: input should be greater than or equal"),
    (["run", "tiny", "hi", "--input-file", "/nonexistent/x.txt"], "Error: cannot read /nonexistent/x.txt"),
    (["run", "tiny", "hi", "--input-file", "/dev/zero"], "Error: /dev/zero is larger than 64 MiB"),
    (["run", "tiny", "hi", "--input-file", "/bin/sh"], "Error: /bin/sh is not UTF-8 text"),
])
def test_chat_errors_are_one_line(capsys, monkeypatch, tiny_alias, argv, message):
    code, _, err = run(capsys, monkeypatch, *argv)
    assert code == 1 and err.startswith(message) and err.count("\n") == 1


def test_a_broken_history_file_is_one_line(capsys, monkeypatch, tiny_alias, tmp_path: Path):
    history = tmp_path / "bad.json"
    history.write_text('{"not": "a list"}')
    code, _, err = run(capsys, monkeypatch, "run", tiny_alias, "hi", "--history", str(history))
    assert code == 1 and err.startswith(f"Error: {history} is not a conversation")
    assert history.read_text() == '{"not": "a list"}'


def test_interactive_chat_in_a_terminal(tiny_alias, tmp_path: Path):
    saved = tmp_path / "saved.json"
    with chat_in_terminal(tiny_alias) as child:
        child.expect_exact(">>> ")
        child.sendline("Say hello.")
        child.expect_exact("Hello there, my \r\n")
        child.expect_exact(">>> ")
        child.sendline("/set parameter stop zzz")
        child.expect_exact("Set parameter 'stop' to 'zzz'")
        child.sendline("/show parameters")
        child.expect(r"stop\s+\['zzz'\]\s+cli")
        child.expect_exact(">>> ")
        child.sendline('"""What is the capital')
        child.expect_exact("... ")
        child.sendline('of France?"""')
        child.expect_exact(">>> ")
        child.sendline("/clear")
        child.expect_exact("Cleared session context")
        child.sendline("Count to five.")
        child.expect_exact("One, two, three, four, five.")
        child.expect_exact(">>> ")
        child.sendline(f"/save {saved}")
        child.expect_exact(f"Saved the conversation to {saved}")
        child.sendline("/set think hard")
        child.expect_exact("Error: invalid think value 'hard'")
        child.sendline("/set nothink")
        child.expect_exact("Set 'nothink' mode.")
        child.sendline("/nonsense")
        child.expect_exact("Unknown command '/nonsense'. Type /? for help")
        child.sendline("/sett parameter temperature 0")
        child.expect_exact("Unknown command '/sett parameter temperature 0' (did you mean '/set'?). Type /? for help")
        child.sendline("/set parameter temprature 0.5")
        child.expect_exact("Error: parameter 'temprature': unknown key (did you mean 'temperature'?)")
        child.sendline("/set parameter num_predict lots")
        child.expect_exact("Error: parameter 'num_predict': input should be a valid integer")
        child.sendcontrol("c")
        child.expect_exact("Use Ctrl + d or /bye to exit.")
        child.expect_exact(">>> ")
        child.sendcontrol("d")
        child.expect(pexpect.EOF)
    assert child.exitstatus == 0
    assert json.loads(saved.read_text()) == [{"role": "user", "content": "Count to five."},
                                             {"role": "assistant", "content": "One, two, three, four, five."}]


def test_ctrl_c_stops_an_answer_and_the_chat_goes_on(tiny_alias):
    with chat_in_terminal(tiny_alias, "--max-new-tokens", "-1", "--ctx", "1000000", "--stop", "never") as child:
        child.expect_exact(">>> ")
        child.sendline("hi")  # babble with no end: minutes of it at this context
        child.expect(r"\S{3}")
        child.sendcontrol("c")
        child.expect_exact(">>> ", timeout=20)
        child.sendline("/clear")
        child.sendline("/set parameter temperature 0")
        child.sendline("Count to five.")  # the session, its loop and its model are whole after the interrupt
        child.expect_exact("One, two, three, four, five.", timeout=30)
        child.expect_exact(">>> ")
        child.sendline("/bye")
        child.expect(pexpect.EOF)
    assert child.exitstatus == 0


@pytest.fixture
def thinker(thinking_model_dir: Path, tiny_cache: Path) -> str:
    install_into_cache(thinking_model_dir, tiny_cache, repo_id=THINKING_REPO_ID)
    return THINKING_REPO_ID


def test_run_shows_thinking_apart_and_keeps_only_the_answer(capsys, monkeypatch, thinker, tmp_path: Path):
    question, answer = CHATS[0]
    history = tmp_path / "history.json"
    code, out, _ = run(capsys, monkeypatch, "run", thinker, question, "--temperature", "0", "--history", str(history))
    assert (code, out) == (0, f"Thinking...\n{THOUGHT}\n...done thinking.\n\n{answer}\n")
    assert json.loads(history.read_text())[-1] == {"role": "assistant", "content": answer}
    for flags in (["--hidethinking"], ["--think=false"], ["--think", "false", "--temperature", "0"]):
        assert run(capsys, monkeypatch, "run", thinker, question, "--temperature", "0", *flags) == (
            0, answer + "\n", "")


def test_think_errors_are_one_line(capsys, monkeypatch, thinker, tiny_alias):
    code, _, err = run(capsys, monkeypatch, "run", tiny_alias, "hi", "--think")
    assert code == 1 and err == "Error: tiny does not support thinking (its chat template has no place for it)\n"
    try:
        code = main(["run", thinker, "hi", "--think=maybe"])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code != 0 and "argument --think: invalid think value 'maybe'" in err and err.count("\n") == 1


def test_an_embedding_model_cannot_chat(capsys, monkeypatch, encoder_model_dir: Path, tiny_cache: Path):
    install_into_cache(encoder_model_dir, tiny_cache, repo_id=ENCODER_REPO_ID)
    code, out, err = run(capsys, monkeypatch, "run", ENCODER_REPO_ID, "hi")
    assert (code, out) == (1, "")
    assert err == (f"Error: {ENCODER_REPO_ID} does not support chat (it is an embedding model; serve it and use "
                   "/api/embed)\n")


def test_run_and_the_server_give_the_same_greedy_answer(capsys, monkeypatch, tiny_alias):
    """One pipeline: the CLI answers through the service the server uses, so both say the same."""
    import httpx

    from hllama.config import load_settings

    from .liveserver import live_server

    question = "Write about rivers and robots."
    code, out, _ = run(capsys, monkeypatch, "run", tiny_alias, question)
    with live_server(load_settings(), watch=False) as url:
        reply = httpx.post(f"{url}/api/chat", timeout=60, json={
            "model": tiny_alias, "stream": False, "messages": [{"role": "user", "content": question}]}).json()
    assert code == 0 and out == reply["message"]["content"] + "\n" and len(out) > 10


#: Text whose line breaks and indentation are its meaning.
DIFF = ("diff --git a/add.py b/add.py\n--- a/add.py\n+++ b/add.py\n@@ -1,2 +1,2 @@\n def add(a, b):\n"
        "-    return a - b\n+    return a + b\n\tindented  twice")


def _asked(history: Path) -> list[str]:
    return [message["content"] for message in json.loads(history.read_text()) if message["role"] == "user"]


def test_text_reaches_the_model_as_given(capsys, monkeypatch, tiny_alias, tmp_path: Path):
    """Piped, from a file, as arguments: line breaks and indentation kept, only blank lines around it dropped."""
    history = tmp_path / "talk.json"
    assert run(capsys, monkeypatch, "run", tiny_alias, "--history", str(history), stdin=f"\n\n{DIFF}\n\n")[0] == 0
    notes = tmp_path / "diff.txt"
    notes.write_text(f"{DIFF}\n")
    assert run(capsys, monkeypatch, "run", tiny_alias, "Review this:", "--input-file", str(notes),
               "--history", str(history))[0] == 0
    assert run(capsys, monkeypatch, "run", tiny_alias, "Two lines:\n  the second indented", "--history",
               str(history))[0] == 0
    assert _asked(history) == [DIFF, f"Review this:\n\n{DIFF}", "Two lines:\n  the second indented"]


def test_a_message_of_several_lines_in_the_terminal_keeps_them(tiny_alias, tmp_path: Path):
    history = tmp_path / "talk.json"
    with chat_in_terminal(tiny_alias, "--history", str(history)) as child:
        child.expect_exact(">>> ")
        child.sendline('"""def add(a, b):')
        child.expect_exact("... ")
        child.sendline("    return a + b")
        child.expect_exact("... ")
        child.sendline('"""')
        child.expect_exact(">>> ")
        child.sendline("/bye")
        child.expect(pexpect.EOF)
    assert _asked(history) == ["def add(a, b):\n    return a + b"]
