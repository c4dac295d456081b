import pytest
from pydantic import ValidationError

from hllama.options import GenerationParameters, Parameters, parse_duration


@pytest.mark.parametrize("value, seconds", [
    (0, 0.0), (30, 30.0), (2.5, 2.5), ("300", 300.0), ("5m", 300.0), ("1h30m", 5400.0),
    ("250ms", 0.25), ("1.5s", 1.5), ("-1", -1.0), (-20, -1.0), ("-5m", -1.0), (None, None),
])
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5x", "m5", "", True])
def test_bad_durations(value):
    with pytest.raises(ValueError):
        parse_duration(value)


def test_ollama_synonyms_are_stored_under_one_name():
    params = Parameters.model_validate({"repeat_penalty": 1.1, "num_predict": 64, "num_ctx": 2048, "stop": "END"})
    assert (params.repetition_penalty, params.max_new_tokens, params.ctx, params.stop) == (1.1, 64, 2048, ["END"])
    assert "repeat_penalty" not in params.model_dump()


def test_repeat_last_n_is_honoured_with_ollamas_default(caplog):
    from hllama.options import BUILTIN_PARAMETERS

    assert Parameters.model_validate({"repeat_last_n": -1}).repeat_last_n == -1
    assert BUILTIN_PARAMETERS.repeat_last_n == 64
    assert "ignoring" not in caplog.text


def test_ollama_only_options_are_ignored_with_a_warning(caplog):
    params = GenerationParameters.model_validate({"temperature": 0.3, "num_gpu": 20, "mirostat": 0})
    assert params.temperature == 0.3
    assert "mirostat, num_gpu" in caplog.text


@pytest.mark.parametrize("field, value", [
    ("temperature", -0.1), ("top_p", 0), ("top_p", 1.01), ("top_k", -1), ("min_p", 1.5),
    ("repetition_penalty", 0), ("presence_penalty", 2.5), ("frequency_penalty", -3), ("max_new_tokens", -2),
    ("ctx", 0), ("seed", "abc"), ("stop", 5), ("repeat_last_n", -2),
])
def test_out_of_range_values_are_refused(field, value):
    with pytest.raises(ValidationError):
        Parameters.model_validate({field: value})


def test_unknown_parameters_are_refused():
    with pytest.raises(ValidationError, match="temprature"):
        Parameters.model_validate({"temprature": 1})
