import pytest

from hllama.errors import InvalidAliasName
from hllama.names import is_local_path, looks_like_repo_id, normalize_alias


@pytest.mark.parametrize("name, expected", [
    ("helper", "helper"),
    ("qwen2.5-coder_7b", "qwen2.5-coder_7b"),
    ("helper:latest", "helper"),
    ("helper:q8", "helper:q8"),
    ("Mixed.Case-1", "Mixed.Case-1"),
])
def test_valid_alias_names(name, expected):
    assert normalize_alias(name) == expected


@pytest.mark.parametrize("name, reason", [
    ("", "empty"),
    ("   ", "empty"),
    ("a/b", "path separators"),
    ("a\\b", "path separators"),
    ("..", "'..'"),
    ("a..b", "'..'"),
    (".hidden", "starting with a letter or digit"),
    ("-flag", "starting with a letter or digit"),
    ("has space", "letters, digits"),
    ("a:b:c", "letters, digits"),
    ("tag:", "letters, digits"),
])
def test_invalid_alias_names(name, reason):
    with pytest.raises(InvalidAliasName) as caught:
        normalize_alias(name)
    assert reason in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_repo_ids_and_paths():
    assert looks_like_repo_id("Qwen/Qwen2.5-0.5B-Instruct")
    assert not looks_like_repo_id("helper")
    assert not looks_like_repo_id("a/b/c")
    assert is_local_path("./models/x") and is_local_path("/opt/x") and is_local_path("~/x")
    assert is_local_path("model.Q4_K_M.gguf")
    assert not is_local_path("Qwen/Qwen2.5-0.5B-Instruct")
