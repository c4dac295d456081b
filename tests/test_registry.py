import json
import shutil
from pathlib import Path

from hllama.aliases.registry import SCHEMA_VERSION, compile_folder, read_mirror, to_json, write_mirror
from hllama.aliases.store import AliasStore
from hllama.config import load_settings
from hllama.errors import DuplicateAlias

from .conftest import EXAMPLES


def _copy_examples(folder: Path) -> None:
    for path in EXAMPLES.iterdir():
        shutil.copy(path, folder / path.name)


def test_compiles_every_format(modelfiles: Path):
    _copy_examples(modelfiles)
    registry = compile_folder(modelfiles)
    assert list(registry.entries) == ["mario", "qwen-helper", "smol-json"]
    assert registry.get("mario:latest").modelfile.parameters.stop == ["<|im_end|>", "User:"]
    assert registry.get("qwen-helper").path == modelfiles / "qwen-helper.yaml"
    assert registry.problems == ()


def test_name_field_wins_over_the_stem(modelfiles: Path):
    (modelfiles / "file.yaml").write_text("name: chosen\nfrom: a/b\n")
    assert list(compile_folder(modelfiles).entries) == ["chosen"]


def test_hidden_temporary_and_foreign_files_are_skipped(modelfiles: Path):
    (modelfiles / "ok.yaml").write_text("from: a/b\n")
    (modelfiles / ".ok.yaml.123.tmp").write_text("from: c/d\n")
    (modelfiles / ".hidden.yaml").write_text("from: c/d\n")
    (modelfiles / "README.md").write_text("# notes\n")
    assert list(compile_folder(modelfiles).entries) == ["ok"]


def test_invalid_file_is_reported_and_left_out(modelfiles: Path):
    _copy_examples(modelfiles)
    (modelfiles / "broken.yaml").write_text("from: a/b\nparameters:\n  top_k: -1\n")
    registry = compile_folder(modelfiles)
    assert "broken" not in registry.entries
    assert len(registry) == 3
    [problem] = registry.problems
    assert str(problem) == (f"{modelfiles / 'broken.yaml'}:3: parameters.top_k: "
                            "input should be greater than or equal to 0 (got -1)")


def test_file_named_like_no_alias_is_reported(modelfiles: Path):
    (modelfiles / "bad name.yaml").write_text("from: a/b\n")
    [problem] = compile_folder(modelfiles).problems
    assert "does not make a valid alias" in str(problem)


def test_last_good_version_is_kept_and_cleared_when_fixed(modelfiles: Path):
    path = modelfiles / "helper.yaml"
    path.write_text("from: a/b\nparameters:\n  temperature: 0.5\n")
    good = compile_folder(modelfiles)
    path.write_text("from: a/b\nparameters:\n  temperature: -0.5\n")
    broken = compile_folder(modelfiles, previous=good)
    entry = broken.get("helper")
    assert entry.modelfile.parameters.temperature == 0.5
    assert entry.error is not None and entry.error.line == 3
    assert broken.problems == (entry.error,)
    path.write_text("from: a/b\nparameters:\n  temperature: 0.25\n")
    fixed = compile_folder(modelfiles, previous=broken)
    assert fixed.get("helper").modelfile.parameters.temperature == 0.25
    assert fixed.get("helper").error is None and fixed.problems == ()


def test_last_good_version_survives_between_processes(modelfiles: Path):
    path = modelfiles / "helper.yaml"
    path.write_text("from: a/b\nsystem: be kind\n")
    AliasStore(load_settings()).refresh()
    path.write_text("from: a/b\nsystem: [unclosed\n")
    registry = AliasStore(load_settings()).refresh()  # a new process would start just like this
    assert registry.get("helper").modelfile.system == "be kind"
    assert "invalid YAML" in str(registry.get("helper").error)


def test_duplicate_alias_names_both_files(modelfiles: Path):
    (modelfiles / "a.yaml").write_text("name: same\nfrom: a/b\n")
    (modelfiles / "b.toml").write_text('name = "same"\nfrom = "c/d"\n')
    registry = compile_folder(modelfiles)
    assert registry.get("same").path == modelfiles / "a.yaml"
    [problem] = registry.problems
    assert isinstance(problem, DuplicateAlias)
    assert problem.path == modelfiles / "b.toml"
    assert str(modelfiles / "a.yaml") in str(problem)


def test_names_are_found_in_any_case_and_clash_when_they_differ_only_in_case(modelfiles: Path):
    (modelfiles / "Mario.yaml").write_text("from: a/b\n")
    (modelfiles / "mario.toml").write_text('from = "c/d"\n')
    registry = compile_folder(modelfiles)
    assert list(registry.entries) == ["Mario"]
    assert registry.get("MARIO:latest").path == modelfiles / "Mario.yaml"
    [problem] = registry.problems
    assert isinstance(problem, DuplicateAlias) and problem.path == modelfiles / "mario.toml"


def test_the_file_that_already_held_a_name_keeps_it(modelfiles: Path):
    (modelfiles / "z.yaml").write_text("name: same\nfrom: a/b\n")
    before = compile_folder(modelfiles)
    (modelfiles / "a.yaml").write_text("name: same\nfrom: c/d\n")  # sorts first, but came later
    after = compile_folder(modelfiles, previous=before)
    assert after.get("same").modelfile.from_ == "a/b"
    assert after.problems[0].path == modelfiles / "a.yaml"


def test_mirror_round_trip(modelfiles: Path, tmp_path: Path):
    _copy_examples(modelfiles)
    (modelfiles / "broken.toml").write_text("from = \n")
    registry = compile_folder(modelfiles)
    mirror = tmp_path / "registry.json"
    write_mirror(registry, mirror)
    document = json.loads(mirror.read_text())
    assert document["schema_version"] == SCHEMA_VERSION
    assert document["aliases"]["qwen-helper"]["modelfile"]["parameters"]["ctx"] == 4096
    assert document["problems"][0]["path"] == str(modelfiles / "broken.toml")
    assert document["problems"][0]["line"] == 1
    again = read_mirror(mirror)
    assert {name: (entry.modelfile, entry.modified) for name, entry in again.entries.items()} == {
        name: (entry.modelfile, entry.modified) for name, entry in registry.entries.items()}
    assert registry.get("qwen-helper").modified == (modelfiles / "qwen-helper.yaml").stat().st_mtime


def test_unreadable_or_foreign_mirror_is_rebuilt(modelfiles: Path, tmp_path: Path):
    mirror = tmp_path / "registry.json"
    for text in ["{not json", "[]", '{"schema_version": 999, "aliases": {}}']:
        mirror.write_text(text)
        assert read_mirror(mirror) is None
    mirror.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "aliases": {"x": {"modelfile": {}}}}))
    assert len(read_mirror(mirror)) == 0


def test_mirror_is_rebuilt_from_the_modelfiles(modelfiles: Path):
    _copy_examples(modelfiles)
    settings = load_settings()
    store = AliasStore(settings)
    store.refresh()
    first = settings.registry_file.read_text()
    settings.registry_file.write_text('{"truncated": ')
    store.refresh()
    assert settings.registry_file.read_text() == first


def test_mirror_write_leaves_no_temporary_file(modelfiles: Path, tmp_path: Path):
    mirror = tmp_path / "out" / "registry.json"
    write_mirror(compile_folder(modelfiles), mirror)
    write_mirror(compile_folder(modelfiles), mirror)
    assert [path.name for path in mirror.parent.iterdir()] == ["registry.json"]
    assert mirror.read_text() == to_json(compile_folder(modelfiles))
