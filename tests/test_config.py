from pathlib import Path

import pytest

from hllama.config import load_settings, parse_host
from hllama.errors import ConfigError


def test_defaults(hllama_home: Path):
    settings = load_settings()
    assert settings.home == hllama_home
    assert settings.modelfiles_dir == hllama_home / "modelfiles"
    assert settings.registry_file == hllama_home / "registry.json"
    assert settings.bind == ("127.0.0.1", 11434)
    assert settings.keep_alive is None and settings.parameters.temperature is None
    assert (settings.max_loaded_models, settings.max_queue, settings.memory_budget) == (3, 512, None)


def test_default_home_is_hfchat(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("HLLAMA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_settings().home == tmp_path / ".hfchat"


def test_config_file(hllama_home: Path):
    hllama_home.mkdir()
    (hllama_home / "config.toml").write_text(
        'modelfiles = "~/my-modelfiles"\nkeep_alive = "10m"\nmemory_budget = "8GiB"\nmax_loaded_models = 2\n'
        '[parameters]\ntemperature = 0.5\nnum_ctx = 2048\nstop = "END"\n[load]\ndtype = "bfloat16"\n')
    settings = load_settings()
    assert settings.modelfiles_dir == Path("~/my-modelfiles").expanduser()
    assert settings.keep_alive == 600.0
    assert settings.memory_budget == 8 * 1024**3
    assert settings.max_loaded_models == 2
    assert (settings.parameters.temperature, settings.parameters.ctx, settings.parameters.stop) == (
        0.5, 2048, ["END"])
    assert settings.load.dtype == "bfloat16"


def test_environment_beats_the_file(hllama_home: Path, monkeypatch: pytest.MonkeyPatch):
    hllama_home.mkdir()
    (hllama_home / "config.toml").write_text('host = "127.0.0.1:9000"\n[parameters]\ntemperature = 0.5\n'
                                             'top_k = 3\n')
    monkeypatch.setenv("HLLAMA_PARAMETERS__TEMPERATURE", "0.1")
    monkeypatch.setenv("HLLAMA_MEMORY_BUDGET", "512MiB")
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0")
    settings = load_settings()
    assert (settings.parameters.temperature, settings.parameters.top_k) == (0.1, 3)
    assert settings.memory_budget == 512 * 1024**2
    assert settings.bind == ("0.0.0.0", 11434)  # Ollama's variable beats the file...
    monkeypatch.setenv("HLLAMA_HOST", "localhost:8080")
    assert load_settings().bind == ("localhost", 8080)  # ...and ours beats Ollama's


def test_ollama_keep_alive_and_limits(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OLLAMA_KEEP_ALIVE", ' "-1" ')
    monkeypatch.setenv("OLLAMA_MAX_LOADED_MODELS", "5")
    settings = load_settings()
    assert (settings.keep_alive, settings.max_loaded_models) == (-1.0, 5)


@pytest.mark.parametrize("value, bind", [
    ("", ("127.0.0.1", 11434)),
    ("0.0.0.0", ("0.0.0.0", 11434)),
    ("example.local:8000", ("example.local", 8000)),
    (":9999", ("127.0.0.1", 9999)),
    ("http://10.1.2.3", ("10.1.2.3", 80)),
    ("https://box", ("box", 443)),
    ("http://[::1]:7000", ("::1", 7000)),
])
def test_host_forms(value, bind):
    assert parse_host(value) == bind


@pytest.mark.parametrize("value", ["h:70000", ":0", "a:b:c", "http://x:port"])
def test_bad_hosts(value):
    with pytest.raises(ValueError, match="invalid host"):
        parse_host(value)


@pytest.mark.parametrize("text, words", [
    ("[parameters]\ntemprature = 1\n", "parameters.temprature"),
    ("[parameters]\ntop_p = 3\n", "less than or equal to 1"),
    ("max_queue = 0\n", "max_queue"),
    ("host = \"a:notaport\"\n", "invalid host"),
    ("surprise = 1\n", "unknown key"),
    ("keep_alive = \n", "invalid TOML"),
])
def test_bad_config_is_one_clear_error(hllama_home: Path, text: str, words: str):
    hllama_home.mkdir()
    (hllama_home / "config.toml").write_text(text)
    with pytest.raises(ConfigError, match=words) as caught:
        load_settings()
    assert "config.toml" in str(caught.value)


def test_example_config_documents_every_key():
    from hllama.config import Settings, tomllib
    from hllama.options import GenerationParameters, LoadOptions

    example = Path(__file__).resolve().parent.parent / "config" / "hllama.example.toml"
    text = example.read_text()
    for name in set(Settings.model_fields) - {"home", "parameters", "load"}:
        assert f"\n# {name} = " in text, name
    for section, model in (("parameters", GenerationParameters), ("load", LoadOptions)):
        for name in model.model_fields:
            assert f"# {name} = " in text.split(f"[{section}]")[1], f"{section}.{name}"
    # Every example value, uncommented, is a valid configuration.
    uncommented = "\n".join(line[2:] if line.startswith("# ") and " = " in line else line
                            for line in text.splitlines())
    settings = Settings(home=Path("/nonexistent"), **tomllib.loads(uncommented))
    assert settings.parameters.seed == 42 and settings.load.quantize == "none"
