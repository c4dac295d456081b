import json
import subprocess
import sys
from pathlib import Path

import pytest

from hllama.aliases.modelfile import Modelfile, load_modelfile
from hllama.aliases.store import AliasStore
from hllama.config import load_settings
from hllama.errors import AliasExists, AliasNotFound, InvalidAliasName, ModelfileError

from .conftest import EXAMPLES, read_json_throughout


@pytest.fixture
def store() -> AliasStore:
    return AliasStore(load_settings())


def test_create_writes_yaml_named_after_the_alias(store: AliasStore):
    modelfile = Modelfile.model_validate({"from": "a/b", "system": "hi", "parameters": {"temperature": 0.7}})
    entry = store.create("helper:latest", modelfile)
    assert entry.name == "helper"
    assert entry.path == store.folder / "helper.yaml"
    assert entry.path.read_text() == "from: a/b\nsystem: hi\nparameters:\n  temperature: 0.7\n"
    assert json.loads(store.mirror.read_text())["aliases"]["helper"]["source"] == str(entry.path)


def test_existing_alias_needs_force(store: AliasStore):
    store.create("helper", Modelfile.model_validate({"from": "a/b"}))
    with pytest.raises(AliasExists):
        store.create("helper", Modelfile.model_validate({"from": "c/d"}))
    assert store.refresh().get("helper").modelfile.from_ == "a/b"
    store.create("helper", Modelfile.model_validate({"from": "c/d"}), force=True)
    assert store.refresh().get("helper").modelfile.from_ == "c/d"


def test_a_name_differing_only_in_case_is_the_same_alias(store: AliasStore):
    store.create("helper", Modelfile.model_validate({"from": "a/b"}))
    with pytest.raises(AliasExists, match="alias 'helper' already exists"):
        store.create("Helper", Modelfile.model_validate({"from": "c/d"}))
    entry = store.create("Helper", Modelfile.model_validate({"from": "c/d"}), force=True)
    assert entry.path == store.folder / "Helper.yaml" and not (store.folder / "helper.yaml").exists()
    assert store.remove(["HELPER"]) == ["Helper"]


def test_force_replaces_an_alias_held_by_another_format(store: AliasStore):
    store.install(EXAMPLES / "mario.modelfile")
    store.create("mario", Modelfile.model_validate({"from": "c/d"}), force=True)
    assert sorted(path.name for path in store.folder.iterdir()) == ["mario.yaml"]


def test_never_overwrites_another_alias_file(store: AliasStore):
    store.folder.mkdir(parents=True)
    (store.folder / "helper.yaml").write_text("name: other\nfrom: a/b\n")
    with pytest.raises(AliasExists):
        store.create("helper", Modelfile.model_validate({"from": "c/d"}), force=True)
    assert (store.folder / "helper.yaml").read_text() == "name: other\nfrom: a/b\n"


def test_broken_file_is_not_overwritten_without_force(store: AliasStore):
    store.folder.mkdir(parents=True)
    (store.folder / "helper.yaml").write_text("from: [\n")
    with pytest.raises(AliasExists):
        store.create("helper", Modelfile.model_validate({"from": "c/d"}))
    assert (store.folder / "helper.yaml").read_text() == "from: [\n"


@pytest.mark.parametrize("name", ["mario.modelfile", "smol-json.toml", "qwen-helper.yaml"])
def test_install_copies_the_file_as_written(store: AliasStore, name: str):
    entry = store.install(EXAMPLES / name)
    assert entry.path == store.folder / name
    assert entry.path.read_text() == (EXAMPLES / name).read_text()


def test_install_under_another_name(store: AliasStore, tmp_path: Path):
    entry = store.install(EXAMPLES / "mario.modelfile", name="luigi")
    assert entry.path == store.folder / "luigi.modelfile"
    assert entry.path.read_text() == (EXAMPLES / "mario.modelfile").read_text()
    named = tmp_path / "named.toml"
    named.write_text('name = "peach"\nfrom = "a/b"\n')
    entry = store.install(named, name="daisy")  # the file's own name would contradict --alias
    assert entry.path == store.folder / "daisy.yaml"
    assert entry.path.read_text() == "from: a/b\n"


def test_install_keeps_a_relative_from_pointing_at_the_same_place(store: AliasStore, tmp_path: Path):
    source = tmp_path / "project" / "Modelfile"
    source.parent.mkdir()
    source.write_text("FROM ./weights\nPARAMETER top_k 3\n")
    entry = store.install(source, name="local")
    assert entry.modelfile.from_ == str(tmp_path / "project" / "weights")
    assert load_modelfile(entry.path).from_ == str(tmp_path / "project" / "weights")


def test_install_refuses_an_invalid_file(store: AliasStore, tmp_path: Path):
    source = tmp_path / "bad.toml"
    source.write_text('from = "a/b"\n[parameters]\ntemperature = -3\n')
    with pytest.raises(ModelfileError, match=":3: parameters.temperature"):
        store.install(source)
    assert not store.folder.exists() or list(store.folder.iterdir()) == []


def test_remove_is_all_or_nothing(store: AliasStore):
    store.install(EXAMPLES / "mario.modelfile")
    store.install(EXAMPLES / "smol-json.toml")
    with pytest.raises(AliasNotFound):
        store.remove(["mario", "nope"])
    assert len(store.refresh()) == 2
    assert store.remove(["mario", "smol-json"]) == ["mario", "smol-json"]
    assert len(store.refresh()) == 0 and list(store.folder.iterdir()) == []
    with pytest.raises(InvalidAliasName):
        store.remove(["../etc"])


WRITER = """
import sys
from hllama.cli import main
for i in range(int(sys.argv[2])):
    assert main(["create", "--alias", f"{sys.argv[1]}-{i}", "--model", "org/model", "--top-k", str(i)]) == 0
"""


def test_two_writer_processes_lose_nothing(store: AliasStore):
    """Real processes creating aliases at once; registry.json is always complete and valid."""
    count = 12
    store.refresh()
    with read_json_throughout(store.mirror) as seen_invalid:
        writers = [subprocess.Popen([sys.executable, "-c", WRITER, name, str(count)])
                   for name in ("left", "right")]
        assert [writer.wait(timeout=120) for writer in writers] == [0, 0]
    assert seen_invalid == []
    aliases = json.loads(store.mirror.read_text())["aliases"]
    assert sorted(aliases) == sorted(f"{side}-{i}" for side in ("left", "right") for i in range(count))
    assert len(list(store.folder.glob("*.yaml"))) == 2 * count
