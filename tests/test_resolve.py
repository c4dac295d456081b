from pathlib import Path

import pytest

from hllama.aliases.registry import compile_folder
from hllama.aliases.resolve import Layer, Overrides, resolve
from hllama.config import load_settings
from hllama.errors import AliasNotFound


@pytest.fixture
def registry(modelfiles: Path, hllama_home: Path):
    (modelfiles / "helper.yaml").write_text(
        "from: org/model\nsystem: from the modelfile\nparameters:\n  temperature: 0.7\n  top_k: 10\n"
        "  stop: [END]\nload:\n  quantize: 8bit\n")
    (hllama_home / "config.toml").write_text(
        'keep_alive = "1h"\n[parameters]\ntemperature = 0.3\ntop_k = 5\nmin_p = 0.05\n[load]\ndtype = "float16"\n')
    return compile_folder(modelfiles)


def test_each_layer_wins_over_the_ones_below(registry):
    resolved = resolve(
        "helper", settings=load_settings(), registry=registry,
        cli=Overrides.model_validate({"parameters": {"top_k": 20, "seed": 1}}),
        api=Overrides.model_validate({"system": "from the request", "parameters": {"seed": 2, "top_p": 0.95}}))
    expected = {
        "model": ("org/model", Layer.MODELFILE),
        "system": ("from the request", Layer.API),
        "parameters.temperature": (0.7, Layer.MODELFILE),
        "parameters.top_k": (20, Layer.CLI),
        "parameters.seed": (2, Layer.API),
        "parameters.top_p": (0.95, Layer.API),
        "parameters.min_p": (0.05, Layer.CONFIG),
        "parameters.keep_alive": (3600.0, Layer.CONFIG),
        "parameters.repetition_penalty": (1.0, Layer.DEFAULT),
        "parameters.stop": (["END"], Layer.MODELFILE),
        "parameters.ctx": (None, None),
        "load.quantize": ("8bit", Layer.MODELFILE),
        "load.dtype": ("float16", Layer.CONFIG),
        "load.trust_remote_code": (False, Layer.DEFAULT),
    }
    explained = {key: (value, layer) for key, value, layer in resolved.explain()}
    for key, value in expected.items():
        assert explained[key] == value, key
    assert resolved.parameters.top_k == 20 and resolved.load.quantize == "8bit"
    assert resolved.alias == "helper"


def test_unset_values_never_override(registry):
    resolved = resolve("helper", settings=load_settings(), registry=registry,
                       cli=Overrides(), api=Overrides.model_validate({"parameters": {"temperature": None}}))
    assert resolved.parameters.temperature == 0.7
    assert resolved.sources["parameters.temperature"] is Layer.MODELFILE


def test_empty_stop_list_is_a_value(registry):
    resolved = resolve("helper", settings=load_settings(), registry=registry,
                       api=Overrides.model_validate({"parameters": {"stop": []}}))
    assert resolved.parameters.stop == [] and resolved.sources["parameters.stop"] is Layer.API


def test_built_in_defaults_alone(modelfiles: Path):
    resolved = resolve("org/model", settings=load_settings(), registry=compile_folder(modelfiles))
    assert resolved.alias is None and resolved.model == "org/model"
    assert resolved.sources["model"] is Layer.NAME
    assert {layer for key, layer in resolved.sources.items() if key != "model"} == {Layer.DEFAULT}
    assert (resolved.parameters.temperature, resolved.parameters.top_p, resolved.parameters.top_k) == (0.8, 0.9, 40)
    assert resolved.parameters.keep_alive == 300.0
    assert resolved.load.trust_remote_code is False


def test_local_model_folder_resolves(modelfiles: Path, tmp_path: Path):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    resolved = resolve(str(folder), settings=load_settings(), registry=compile_folder(modelfiles))
    assert resolved.model == str(folder)


def test_tag_latest_is_the_alias(registry):
    assert resolve("helper:latest", settings=load_settings(), registry=registry).alias == "helper"


@pytest.mark.parametrize("name", ["nope", "nope:7b", "a/b/c", ""])
def test_unknown_names(registry, name):
    with pytest.raises(AliasNotFound):
        resolve(name, settings=load_settings(), registry=registry)


def test_an_alias_builds_on_the_alias_its_from_names(registry, modelfiles: Path):
    (modelfiles / "terse.yaml").write_text("from: helper\nsystem: Be terse.\nparameters:\n  top_k: 3\n")
    (modelfiles / "terser.modelfile").write_text("FROM terse\nPARAMETER temperature 0.1\n")
    resolved = resolve("terser", settings=load_settings(), registry=compile_folder(modelfiles))
    assert (resolved.model, resolved.system, resolved.load.quantize) == ("org/model", "Be terse.", "8bit")
    params = resolved.parameters
    assert (params.temperature, params.top_k, params.stop) == (0.1, 3, ["END"])  # each over the one below it
    assert resolved.sources["model"] == resolved.sources["parameters.temperature"] == Layer.MODELFILE


def test_aliases_that_build_on_each_other_in_a_circle_are_an_error(modelfiles: Path, hllama_home: Path):
    from hllama.errors import ModelfileError

    (modelfiles / "ping.yaml").write_text("from: pong\n")
    (modelfiles / "pong.yaml").write_text("from: ping\n")
    with pytest.raises(ModelfileError, match=r"goes round in a circle or too deep \(ping -> pong -> ping\)"):
        resolve("ping", settings=load_settings(), registry=compile_folder(modelfiles))
