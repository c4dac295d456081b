from pathlib import Path

import pytest

from hllama.aliases.modelfile import detect_format, dump_yaml, load_modelfile, parse_modelfile
from hllama.errors import ModelfileError, UnsupportedInstruction

from .conftest import EXAMPLES


def test_yaml_example():
    modelfile = load_modelfile(EXAMPLES / "qwen-helper.yaml")
    assert modelfile.from_ == "Qwen/Qwen2.5-0.5B-Instruct"
    assert modelfile.system == "You are a concise assistant. Answer in at most three sentences.\n"
    assert [(m.role, m.content) for m in modelfile.messages] == [
        ("user", "What is the capital of France?"), ("assistant", "Paris.")]
    params = modelfile.parameters
    assert (params.temperature, params.top_p, params.stop, params.ctx, params.keep_alive) == (
        0.7, 0.9, ["<|im_end|>"], 4096, 600.0)
    assert modelfile.load.quantize == "8bit"


def test_toml_example():
    modelfile = load_modelfile(EXAMPLES / "smol-json.toml")
    assert modelfile.from_ == "HuggingFaceTB/SmolLM2-360M-Instruct"
    params = modelfile.parameters
    assert (params.temperature, params.repetition_penalty, params.max_new_tokens, params.json_mode) == (
        0.2, 1.1, 256, True)
    assert modelfile.load.dtype == "bfloat16"


def test_ollama_example():
    modelfile = load_modelfile(EXAMPLES / "mario.modelfile")
    assert modelfile.from_ == "smollm2"  # the built-in alias
    assert modelfile.system == "You are Mario from Super Mario Bros.\nAnswer as Mario, the assistant, only."
    assert modelfile.parameters.temperature == 1.0
    assert modelfile.parameters.max_new_tokens == 128
    assert modelfile.parameters.stop == ["<|im_end|>", "User:"]
    assert [(m.role, m.content) for m in modelfile.messages] == [
        ("user", "Who are you?"), ("assistant", "It's-a me, Mario!")]
    assert modelfile.license == "Apache-2.0"


@pytest.mark.parametrize("name", ["qwen-helper.yaml", "smol-json.toml", "mario.modelfile"])
def test_yaml_dump_reads_back_the_same(name):
    modelfile = load_modelfile(EXAMPLES / name)
    assert parse_modelfile(dump_yaml(modelfile), fmt="yaml") == modelfile


def test_ollama_syntax_details():
    text = (
        "\ufeff# a comment\n"
        "from org/model\n"
        "Parameter top_k 20\n"
        "PARAMETER\tstop \"say \\\"bye\\\"\"\n"
        "PARAMETER stop <|end|>\n"
        "  # indented comment\n"
        "SYSTEM \"\"\"one \"quoted\" word\n"
        "and a second line\"\"\"\n"
        "TEMPLATE \"\"\"{% for m in messages %}{{ m.content }}{% endfor %}\"\"\"\n"
        "MESSAGE user \"hi there\"\n"
        "LICENSE MIT\n"
        "LICENSE \"\"\"more terms\"\"\"\n"
        "REQUIRES 0.5.0\n"
    )
    modelfile = parse_modelfile(text, fmt="ollama")
    assert modelfile.from_ == "org/model"
    assert modelfile.parameters.top_k == 20
    assert modelfile.parameters.stop == ['say "bye"', "<|end|>"]
    assert modelfile.system == 'one "quoted" word\nand a second line'
    assert modelfile.template == "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert modelfile.messages[0].content == "hi there"
    assert modelfile.license == "MIT\n\nmore terms"


def test_quoted_value_may_span_lines():
    modelfile = parse_modelfile('FROM a/b\nSYSTEM "first\nsecond"\n', fmt="ollama")
    assert modelfile.system == "first\nsecond"


def test_lone_stop_string_becomes_a_list():
    assert parse_modelfile("from: a/b\nparameters:\n  stop: END\n", fmt="yaml").parameters.stop == ["END"]
    assert parse_modelfile('from = "a/b"\n[parameters]\nstop = "END"\n', fmt="toml").parameters.stop == ["END"]


def test_ollama_names_are_normalised_in_every_format():
    yaml = parse_modelfile("from: a/b\nparameters:\n  repeat_penalty: 1.2\n  num_predict: 9\n  num_ctx: 99\n")
    toml = parse_modelfile('from = "a/b"\n[parameters]\nrepeat_penalty = 1.2\nnum_predict = 9\nnum_ctx = 99\n',
                           fmt="toml")
    ollama = parse_modelfile("FROM a/b\nPARAMETER repeat_penalty 1.2\nPARAMETER num_predict 9\n"
                             "PARAMETER num_ctx 99\n", fmt="ollama")
    for modelfile in (yaml, toml, ollama):
        params = modelfile.parameters
        assert (params.repetition_penalty, params.max_new_tokens, params.ctx) == (1.2, 9, 99)


def test_relative_from_is_relative_to_the_modelfile(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "local.modelfile"
    path.write_text("FROM ../weights\n")
    assert load_modelfile(path).from_ == str(tmp_path / "weights")


@pytest.mark.parametrize("text, path, fmt", [
    ("from: a/b\n", "x.yaml", "yaml"),
    ("from = 'a/b'\n", "x.toml", "toml"),
    ("# c\nFROM a/b\n", "x.modelfile", "ollama"),
    ("from: a/b\n", "x.modelfile", "yaml"),
    ("FROM a/b\n", "Modelfile", "ollama"),
])
def test_format_detection(text, path, fmt):
    assert detect_format(text, Path(path)) == fmt


# (file name, text, line, field, words the message must contain)
ERRORS = [
    ("unknown.yaml", "from: a/b\nparameters:\n  temprature: 1\n", 3, "parameters.temprature",
     "unknown key (did you mean 'temperature'?)"),
    ("top.yaml", "from: a/b\nfoo: 1\n", 2, "foo", "unknown key"),
    ("type.yaml", "from: a/b\nparameters:\n  top_k: many\n", 3, "parameters.top_k", "valid integer"),
    ("temp.yaml", "from: a/b\n\nparameters:\n  temperature: -1\n", 4, "parameters.temperature",
     "greater than or equal to 0"),
    ("topp.yaml", "from: a/b\nparameters:\n  top_p: 0\n", 3, "parameters.top_p", "greater than 0"),
    ("topp2.yaml", "from: a/b\nparameters:\n  top_p: 1.5\n", 3, "parameters.top_p", "less than or equal to 1"),
    ("role.yaml", "from: a/b\nmessages:\n  - role: user\n    content: a\n  - role: bot\n    content: b\n", 5,
     "messages[1].role", "'system', 'user' or 'assistant'"),
    ("missing.yaml", "system: hi\n", None, "from", "required"),
    ("from.yaml", "system: hi\nfrom: not a model\n", 2, "from", "expected a Hub repo id"),
    ("syntax.yaml", "from: a/b\nparameters: [1,\n", 3, None, "invalid YAML"),
    ("list.yaml", "- a\n- b\n", 1, None, "expected a mapping"),
    ("empty.yaml", "", None, None, "empty"),
    ("name.yaml", "name: ../evil\nfrom: a/b\n", 1, "name", "path separators"),
    ("twice.yaml", "from: a/b\nparameters:\n  ctx: 1\n  num_ctx: 2\n", 4, "parameters.num_ctx",
     "same setting"),
    ("unknown.toml", 'from = "a/b"\n\n[parameters]\ntop_kk = 3\n', 4, "parameters.top_kk",
     "did you mean 'top_k'"),
    ("range.toml", 'from = "a/b"\n[parameters]\ntop_k = -3\n', 3, "parameters.top_k", "greater than or equal to 0"),
    ("type.toml", 'from = "a/b"\n[load]\nquantize = "3bit"\n', 3, "load.quantize", "'none', '8bit', '4bit' or 'auto'"),
    ("dotted.toml", 'from = "a/b"\nparameters.min_p = 2\n', 2, "parameters.min_p", "less than or equal to 1"),
    ("messages.toml", 'from = "a/b"\n[[messages]]\nrole = "user"\ncontent = "a"\n[[messages]]\nrole = "x"\n'
     'content = "b"\n', 6, "messages[1].role", "'system', 'user' or 'assistant'"),
    ("syntax.toml", 'from = "a/b"\ntemperature = \n', 2, None, "invalid TOML"),
    ("range.modelfile", "FROM a/b\nPARAMETER temperature -2\n", 2, "parameters.temperature",
     "greater than or equal to 0"),
    ("type.modelfile", "FROM a/b\n\nPARAMETER seed lucky\n", 3, "parameters.seed", "valid integer"),
    ("unknown.modelfile", "FROM a/b\nPARAMETER foo 1\n", 2, "parameters.foo", "unknown key"),
    ("stop.modelfile", "FROM a/b\nPARAMETER stop a\nPARAMETER top_p 9\n", 3, "parameters.top_p", "less than"),
    ("instruction.modelfile", "FROM a/b\nPARAMTER top_k 2\n", 2, None, "unknown instruction 'PARAMTER'"),
    ("role.modelfile", "FROM a/b\nMESSAGE user hi\nMESSAGE robot hi\n", 3, "messages[1].role", "'system'"),
    ("nofrom.modelfile", "PARAMETER top_k 2\n", None, "FROM", "no FROM line"),
    ("open.modelfile", 'FROM a/b\nSYSTEM """never\nclosed\n', 2, None, 'unterminated """'),
    ("open2.modelfile", 'FROM a/b\nSYSTEM "never\n', 2, None, 'unterminated "'),
    ("trailing.modelfile", 'FROM a/b\nSYSTEM "x" y\n', 2, None, "unexpected text"),
    ("go.modelfile", 'FROM a/b\nTEMPLATE """{{ .System }} {{ .Prompt }}"""\n', 2, "template",
     "not Ollama's Go templates"),
    ("param.modelfile", "FROM a/b\nPARAMETER\n", 2, "PARAMETER", "needs a name and a value"),
]


@pytest.mark.parametrize("name, text, line, field, words", ERRORS, ids=[case[0] for case in ERRORS])
def test_errors_name_file_line_and_field(tmp_path: Path, name, text, line, field, words):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ModelfileError) as caught:
        load_modelfile(path)
    error = caught.value
    assert (error.path, error.line, error.field) == (path, line, field)
    assert words in error.message
    location = f"{path}:{line}" if line else str(path)
    assert str(error).startswith(f"{location}: {field + ': ' if field else ''}")


def test_adapter_is_refused_clearly(tmp_path: Path):
    path = tmp_path / "lora.modelfile"
    path.write_text("FROM a/b\nADAPTER ./lora.gguf\n")
    with pytest.raises(UnsupportedInstruction, match="ADAPTER is not supported") as caught:
        load_modelfile(path)
    assert caught.value.line == 2


def test_unreadable_file(tmp_path: Path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ModelfileError, match="not a UTF-8 text file"):
        load_modelfile(path)
    with pytest.raises(ModelfileError, match="cannot read"):
        load_modelfile(tmp_path / "missing.yaml")
