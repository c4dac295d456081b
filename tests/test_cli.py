import os
import subprocess
import sys
from pathlib import Path

import pytest

from hllama.cli import main

from .conftest import EXAMPLES


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own exits (--help, usage errors)
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_create_list_show_rm_with_flags(capsys, hllama_home: Path):
    code, out, err = run(capsys, "create", "--alias", "helper", "--model", "Qwen/Qwen2.5-0.5B-Instruct",
                         "--system", "Be brief.", "--temperature", "0.7", "--top-p", "0.95", "--top-k", "20",
                         "--min-p", "0.05", "--seed", "7", "--repetition-penalty", "1.1",
                         "--presence-penalty", "0.5", "--frequency-penalty", "0.25", "--stop", "<|im_end|>",
                         "--stop", "User:", "--max-new-tokens", "128", "--ctx", "2048", "--json-mode",
                         "--load-in-8bit")
    path = hllama_home / "modelfiles" / "helper.yaml"
    assert (code, out, err) == (0, f"created 'helper' ({path})\n", "")
    assert path.read_text() == (
        "from: Qwen/Qwen2.5-0.5B-Instruct\n"
        "system: Be brief.\n"
        "parameters:\n"
        "  temperature: 0.7\n  top_p: 0.95\n  top_k: 20\n  min_p: 0.05\n  seed: 7\n"
        "  repetition_penalty: 1.1\n  presence_penalty: 0.5\n  frequency_penalty: 0.25\n"
        "  stop:\n  - <|im_end|>\n  - 'User:'\n  max_new_tokens: 128\n  ctx: 2048\n  json_mode: true\n"
        "load:\n  quantize: 8bit\n")

    code, out, err = run(capsys, "list")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "NAME    MODEL                       PRECISION  SIZE  NEEDS           FITS  PARAMETERS"
        "                                        SOURCE",
        "helper  Qwen/Qwen2.5-0.5B-Instruct  8bit       -     not downloaded  -     temperature=0.7 top_p=0.95 "
        "top_k=20 ctx=2048 ma…  helper.yaml",
    ]

    code, out, _ = run(capsys, "show", "helper")
    assert code == 0
    assert out == ("name: helper\n" + path.read_text()
                   + "# not downloaded yet: hllama pull Qwen/Qwen2.5-0.5B-Instruct\n")

    code, out, _ = run(capsys, "show", "helper", "--modelfile")
    assert code == 0 and out == path.read_text()

    code, out, err = run(capsys, "rm", "helper")
    assert (code, out, err) == (0, "deleted 'helper'\n", "")
    assert not path.exists()
    assert run(capsys, "list")[1] == "NAME  MODEL  PRECISION  SIZE  NEEDS  FITS  PARAMETERS  SOURCE\n"


def test_ollama_flag_spellings(capsys, hllama_home: Path):
    code, _, _ = run(capsys, "create", "helper", "--model", "a/b", "--num-ctx", "99", "--num-predict", "5",
                     "--repeat-penalty", "1.2", "--keep-alive", "10m", "--load-in-4bit")
    assert code == 0
    assert (hllama_home / "modelfiles" / "helper.yaml").read_text() == (
        "from: a/b\nparameters:\n  repetition_penalty: 1.2\n  max_new_tokens: 5\n  ctx: 99\n"
        "  keep_alive: 600.0\nload:\n  quantize: 4bit\n")


def test_show_explain_names_the_layer_of_every_value(capsys, hllama_home: Path):
    run(capsys, "create", "--alias", "helper", "--model", "org/model", "--temperature", "0.7", "--load-in-8bit")
    (hllama_home / "config.toml").write_text("[parameters]\ntop_k = 5\n")
    code, out, err = run(capsys, "show", "helper", "--explain")
    assert (code, err) == (0, "")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert rows["model"] == ['"org/model"', "modelfile"]
    assert rows["parameters.temperature"] == ["0.7", "modelfile"]
    assert rows["parameters.top_k"] == ["5", "config"]
    assert rows["parameters.top_p"] == ["0.9", "default"]
    assert rows["parameters.seed"] == ["-", "unset"]
    assert rows["load.quantize"] == ['"8bit"', "modelfile"]
    code, out, _ = run(capsys, "show", "org/other", "--explain")
    assert code == 0 and '"org/other"' in out and "name" in out.splitlines()[1]


@pytest.mark.parametrize("example", ["qwen-helper.yaml", "smol-json.toml", "mario.modelfile"])
def test_create_from_each_format(capsys, hllama_home: Path, example: str):
    code, out, err = run(capsys, "create", "-f", str(EXAMPLES / example))
    name = example.rsplit(".", 1)[0]
    installed = hllama_home / "modelfiles" / example
    assert (code, out, err) == (0, f"created '{name}' ({installed})\n", "")
    assert installed.read_text() == (EXAMPLES / example).read_text()
    code, out, _ = run(capsys, "show", name, "--modelfile")
    assert out == (EXAMPLES / example).read_text()


def test_invalid_modelfile_shows_in_list(capsys, modelfiles: Path):
    (modelfiles / "ok.toml").write_text('from = "a/b"\n')
    (modelfiles / "broken.yaml").write_text("from: a/b\nparameters:\n  top_p: 7\n")
    code, out, err = run(capsys, "list")
    assert code == 0 and err == ""
    assert out.splitlines()[-1] == (f"invalid: {modelfiles / 'broken.yaml'}:3: parameters.top_p: "
                                    "input should be less than or equal to 1 (got 7)")
    assert out.splitlines()[1].startswith("ok ")


def test_broken_alias_keeps_its_last_good_version(capsys, modelfiles: Path):
    run(capsys, "create", "--alias", "helper", "--model", "a/b", "--temperature", "0.5")
    (modelfiles / "helper.yaml").write_text("from: a/b\nparameters:\n  temperature: hot\n")
    _, out, _ = run(capsys, "list")
    assert "helper  a/b" in out and "(alias 'helper' keeps its last good version)" in out
    _, out, _ = run(capsys, "show", "helper")
    assert out.startswith(f"# {modelfiles / 'helper.yaml'}:3: parameters.temperature:")
    assert "temperature: 0.5" in out


# (argv, exit code, start of the one line on stderr)
BAD_INPUT = [
    (["show", "nope"], 1, "Error: model 'nope' not found; run 'hllama list'"),
    (["rm", "nope"], 1, "Error: model 'nope' not found"),
    (["show", "nope", "--explain"], 1, "Error: model 'nope' not found"),
    (["create", "--alias", "../x", "--model", "a/b"], 1, "Error: invalid alias name '../x': path separators"),
    (["create", "--alias", "", "--model", "a/b"], 1, "Error: create needs --alias NAME and --model ID"),
    (["create", "--alias", "x:y:z", "--model", "a/b"], 1, "Error: invalid alias name 'x:y:z'"),
    (["create", "--alias", "x"], 1, "Error: create needs --alias NAME and --model ID, or -f FILE"),
    (["create", "--alias", "x", "--model", "a/b", "--temperature", "hot"], 1,
     "Error: --temperature: input should be a valid number"),
    (["create", "--alias", "x", "--model", "a/b", "--top-p", "1.5"], 1,
     "Error: --top-p: input should be less than or equal to 1"),
    (["create", "--alias", "x", "--model", "a/b", "--keep-alive", "soon"], 1, "Error: --keep-alive: invalid duration"),
    (["create", "--alias", "x", "--model", ""], 1, "Error: create needs --alias NAME and --model ID"),
    (["create", "a", "--alias", "b", "--model", "a/b"], 1, "Error: two names given"),
    (["create", "-f", "missing.yaml"], 1, "Error: missing.yaml: cannot read"),
    (["create", "-f", str(EXAMPLES / "mario.modelfile"), "--temperature", "1"], 1,
     "Error: -f takes its settings from the file"),
    (["create", "--load-in-8bit", "--load-in-4bit"], 2, "Error: argument --load-in-4bit: not allowed"),
    (["create", "--alias", "x", "--model", "a/b", "--dtype", "int3"], 2, "Error: argument --dtype: invalid choice"),
    (["frobnicate"], 2, "Error: unknown command 'frobnicate' (see 'hllama --help')"),
    (["lsit"], 2, "Error: unknown command 'lsit' (did you mean 'list'?) (see 'hllama --help')"),
    (["run", "x", "hi", "--temprature", "0.5"], 2,
     "Error: unrecognized argument --temprature (did you mean '--temperature'?) (see 'hllama run --help')"),
    (["create", "--alias", "x", "--model=a/b", "--sytem=hi"], 2,
     "Error: unrecognized argument --sytem (did you mean '--system'?) (see 'hllama create --help')"),
    (["ps", "extra"], 2, "Error: unexpected argument 'extra' (see 'hllama ps --help')"),
    (["rm", "nothing-like-it"], 1, "Error: model 'nothing-like-it' not found; run 'hllama list'"),
    (["show"], 2, "Error: the following arguments are required: name"),
]


@pytest.mark.parametrize("argv, code, message", BAD_INPUT, ids=[" ".join(case[0]) for case in BAD_INPUT])
def test_bad_input_is_one_line_and_a_nonzero_exit(capsys, argv, code, message):
    result, out, err = run(capsys, *argv)
    assert result == code
    assert err.startswith(message), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_existing_alias_is_not_overwritten_without_force(capsys, modelfiles: Path):
    run(capsys, "create", "--alias", "x", "--model", "a/b")
    code, _, err = run(capsys, "create", "--alias", "x", "--model", "c/d")
    assert code == 1
    assert err == f"Error: alias 'x' already exists ({modelfiles / 'x.yaml'}); add --force to replace it\n"
    assert run(capsys, "create", "--alias", "x", "--model", "c/d", "--force")[0] == 0
    assert (modelfiles / "x.yaml").read_text() == "from: c/d\n"


def test_bad_config_is_one_line(capsys, hllama_home: Path):
    hllama_home.mkdir()
    (hllama_home / "config.toml").write_text("[parameters]\ntop_k = -1\n")
    code, _, err = run(capsys, "list")
    assert code == 1
    assert err.startswith("Error: invalid setting parameters.top_k") and err.count("\n") == 1


def _run_module(*argv: str, code: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code, *argv] if code else [sys.executable, "-m", "hllama", *argv]
    return subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), timeout=60)


def test_python_dash_m(hllama_home: Path):
    from hllama import __version__

    result = _run_module("--version")
    assert (result.returncode, result.stdout) == (0, f"hllama {__version__}\n")


def test_a_reader_that_stops_early_is_no_error(hllama_home: Path):
    """``hllama show X --explain | head -1``: no "Broken pipe" message, the shell's usual 141."""
    assert main(["create", "--alias", "helper", "--model", "org/model"]) == 0
    process = subprocess.Popen([sys.executable, "-m", "hllama", "show", "helper", "--explain"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    process.stdout.close()  # the reader is gone before the first line
    assert (process.wait(timeout=60), process.stderr.read()) == (141, b"")


NO_HEAVY_IMPORTS = """
import sys
from hllama.cli import main
for argv in (["create", "--alias", "x", "--model", "a/b"], ["list"], ["show", "x"], ["show", "x", "--explain"],
             ["show", "x", "--modelfile"], ["rm", "x"], ["create", "-f", sys.argv[1]], ["cache", "--scan"]):
    assert main(argv) == 0, argv
heavy = sorted(name for name in ("torch", "transformers", "accelerate", "bitsandbytes") if name in sys.modules)
print(",".join(heavy) or "none")
"""


def test_commands_without_a_model_do_not_import_torch_or_transformers():
    result = _run_module(str(EXAMPLES / "mario.modelfile"), code=NO_HEAVY_IMPORTS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "none"


def test_a_relative_model_path_is_relative_to_where_the_command_runs(capsys, monkeypatch, tmp_path: Path,
                                                                       modelfiles: Path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "config.json").write_text("{}")
    assert run(capsys, "create", "--alias", "local", "--model", "./weights")[0] == 0
    assert (modelfiles / "local.yaml").read_text() == f"from: {tmp_path / 'weights'}\n"


def test_a_local_path_that_holds_no_model_is_refused(capsys, tmp_path: Path, modelfiles: Path):
    for path in ("/etc", str(tmp_path / "missing"), "./nothing-here"):
        code, _, err = run(capsys, "create", "--alias", "x", "--model", path)
        assert code == 1 and err.startswith(f"Error: no model at '{path}'") and err.count("\n") == 1
    assert list(modelfiles.iterdir()) == []


def test_model_reference_is_checked(capsys):
    code, _, err = run(capsys, "create", "--alias", "x", "--model", "not a model!")
    assert code == 1 and err.startswith("Error: --model: expected a Hub repo id")
    assert run(capsys, "create", "--alias", "gpt", "--model", "gpt2")[0] == 0


def test_a_mistyped_name_is_told_the_closest_alias(capsys, modelfiles: Path):
    run(capsys, "create", "--alias", "helper", "--model", "a/b")
    for argv in (["run", "helpr", "hi"], ["show", "helpr"], ["rm", "helpr"]):
        code, _, err = run(capsys, *argv)
        assert (code, err) == (1, "Error: model 'helpr' not found (did you mean 'helper'?); run 'hllama list' to "
                                  "see the aliases\n"), argv
