"""Nothing a file, a flag or a damaged registry says may make the alias store unusable."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hllama.aliases import registry as registry_module
from hllama.aliases.modelfile import MAX_MODELFILE_BYTES
from hllama.aliases.store import AliasStore
from hllama.cli import main
from hllama.config import load_settings

SECRET = "root:$6$s3cr3tHash$abcdefghijkl:19000:0:99999:7:::"


def _store_still_works(capsys) -> None:
    """create, list and rm all answer without a traceback after whatever the test did."""
    capsys.readouterr()
    assert main(["create", "--alias", "after", "--model", "a/b"]) == 0
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "after" in listed
    assert main(["rm", "after"]) == 0


def test_a_lone_surrogate_from_a_flag_is_refused_and_writes_nothing(modelfiles: Path, capsys):
    assert main(["create", "--alias", "x", "--model", "a/b", "--system", "\ud800"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "system" in error and "surrogate" in error
    assert list(modelfiles.iterdir()) == []
    _store_still_works(capsys)


@pytest.mark.parametrize("text", ['from: a/b\nsystem: "\\uD800"\n', "from: a/b\nsystem: \"x\\udfff\"\n"])
def test_a_lone_surrogate_in_a_yaml_file_is_a_file_line_error(modelfiles: Path, capsys, text: str):
    (modelfiles / "bad.yaml").write_text(text)
    _store_still_works(capsys)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert f"invalid: {modelfiles / 'bad.yaml'}:2: system: not Unicode text" in out
    assert main(["rm", "after"]) == 1  # gone already: one line, no traceback
    assert main(["rm", "bad"]) == 0 and not (modelfiles / "bad.yaml").exists()  # a broken file is removable
    assert "deleted 'bad'" in capsys.readouterr().out


def test_undecodable_bytes_in_a_modelfile_are_an_error_not_a_crash(modelfiles: Path, capsys):
    (modelfiles / "bytes.yaml").write_bytes(b"from: a/b\nsystem: \xed\xa0\x80\n")
    _store_still_works(capsys)
    main(["list"])
    assert f"{modelfiles / 'bytes.yaml'}: not a UTF-8 text file" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["bytes", "deep", "folder", "huge-array", "wrong-shapes"])
def test_a_damaged_registry_is_rebuilt(hllama_home: Path, modelfiles: Path, capsys, damage: str):
    (modelfiles / "kept.yaml").write_text("from: a/b\n")
    mirror = hllama_home / "registry.json"
    if damage == "bytes":
        mirror.write_bytes(b'{"schema_version": 1, "aliases": {"\xff\xfe": 1}}')
    elif damage == "deep":
        mirror.write_text("[" * 200_000)
    elif damage == "folder":
        mirror.mkdir()
        (mirror / "inside").write_text("x")
    elif damage == "huge-array":
        mirror.write_text('{"schema_version": 1, "aliases": [' + "1," * 10_000 + "1]}")
    else:
        mirror.write_text(json.dumps({"schema_version": 1, "aliases": {"../x": {"modelfile": [], "source": 3},
                                                                       "ok": "text"}, "problems": {"a": 1}}))
    _store_still_works(capsys)
    assert json.loads(mirror.read_text())["aliases"].keys() == {"kept"}
    if damage == "folder":  # moved aside, never deleted
        [aside] = hllama_home.glob("registry.json.damaged-*")
        assert (aside / "inside").read_text() == "x"


def test_a_too_large_modelfile_is_one_clear_line_and_is_not_parsed(modelfiles: Path, capsys):
    big = modelfiles / "big.yaml"
    big.write_text("from: a/b\nsystem: |\n" + "  words words words\n" * (MAX_MODELFILE_BYTES // 18))
    assert big.stat().st_size > MAX_MODELFILE_BYTES
    started = time.perf_counter()
    _store_still_works(capsys)
    assert time.perf_counter() - started < 10  # every command stays usable (the file is never parsed)
    main(["list"])
    assert f"invalid: {big}: too large: a modelfile may hold at most 1024 KiB" in capsys.readouterr().out
    assert main(["create", "-f", str(big), "--alias", "big2"]) == 1
    assert "too large" in capsys.readouterr().err


def test_create_from_a_fifo_or_a_device_does_not_hang(tmp_path: Path, modelfiles: Path, capsys):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    for source in (fifo, Path("/dev/zero")):
        started = time.perf_counter()
        assert main(["create", "-f", str(source), "--alias", "x"]) == 1
        assert time.perf_counter() - started < 5
        assert "not a regular file" in capsys.readouterr().err
    (modelfiles / "pipe.yaml").symlink_to("/dev/zero")  # in the folder: skipped, never read
    _store_still_works(capsys)


def test_only_changed_files_are_parsed_again(modelfiles: Path, monkeypatch: pytest.MonkeyPatch):
    for index in range(5):
        (modelfiles / f"a{index}.yaml").write_text(f"from: a/b{index}\n")
    (modelfiles / "broken.yaml").write_text("from: a/b\nparameters: {temperature: -1}\n")
    store = AliasStore(load_settings())
    store.refresh()
    parsed: list[str] = []
    real = registry_module.parse_modelfile

    def counting(text, *, path=None, fmt=None):
        parsed.append(path.name)
        return real(text, path=path, fmt=fmt)

    monkeypatch.setattr(registry_module, "parse_modelfile", counting)
    fresh = AliasStore(load_settings())  # another process: it learns what was parsed from registry.json
    assert len(fresh.refresh()) == 5 and parsed == []
    (modelfiles / "a3.yaml").write_text("from: c/d\n")
    registry = fresh.refresh()
    assert parsed == ["a3.yaml"] and registry.get("a3").modelfile.from_ == "c/d"
    assert [error.path.name for error in registry.problems] == ["broken.yaml"]


def test_temporary_files_of_a_killed_writer_are_swept(hllama_home: Path, modelfiles: Path, capsys):
    left = [modelfiles / ".helper.yaml.k3j4h5g6.tmp", hllama_home / ".registry.json.a1b2c3d4.tmp"]
    for path in left:
        path.write_text("half")
    mine = [modelfiles / "notes.tmp", modelfiles / ".notes.txt.a1b2c3d4.tmp", hllama_home / ".other.json.a1b2c3d4.tmp"]
    for path in mine:
        path.write_text("not hllama's")
    _store_still_works(capsys)
    assert not any(path.exists() for path in left)
    assert all(path.exists() for path in mine)


def test_a_killed_create_leaves_temporaries_that_the_next_command_sweeps(hllama_home: Path, modelfiles: Path):
    code = ("import os, hllama.fsutil as f\n"
            "real = os.replace\n"
            "os.replace = lambda *a: os._exit(9)\n"
            "from hllama.cli import main\nmain(['create', '--alias', 'x', '--model', 'a/b'])\n")
    assert subprocess.run([sys.executable, "-c", code], env=dict(os.environ)).returncode == 9
    assert list(modelfiles.glob(".*.tmp")) or list(hllama_home.glob(".*.tmp"))
    assert main(["list"]) == 0
    assert not list(modelfiles.glob(".*.tmp")) and not list(hllama_home.glob(".*.tmp"))


def test_a_link_out_of_the_folder_is_refused_and_echoes_nothing(tmp_path: Path, hllama_home: Path,
                                                                 modelfiles: Path, capsys):
    secret = tmp_path / "shadow"
    secret.write_text(SECRET + "\nbin:*:19000:0:99999:7:::\n")
    (modelfiles / "shadow.modelfile").symlink_to(secret)
    (tmp_path / "ok.yaml").write_text("from: a/b\n")
    (modelfiles / "outside.yaml").symlink_to(tmp_path / "ok.yaml")
    inside = modelfiles / "real.yaml"
    inside.write_text("from: a/b\n")
    (modelfiles / "linked.yaml").symlink_to(inside)  # a link inside the folder is fine
    main(["list"])
    out = capsys.readouterr().out
    assert "linked" in out and "real" in out
    assert f"invalid: {modelfiles / 'shadow.modelfile'}: a link to a file outside the modelfiles folder" in out
    assert f"invalid: {modelfiles / 'outside.yaml'}: a link to a file outside" in out
    mirror = (hllama_home / "registry.json").read_text()
    for text in (out, mirror):
        assert "s3cr3t" not in text and "19000" not in text


def test_file_errors_name_keys_but_never_echo_text(tmp_path: Path, capsys):
    secret = tmp_path / "secret.yaml"
    secret.write_text(f"from: a/b\nparameters: {{top_k: 'x{SECRET}'}}\n")
    assert main(["create", "-f", str(secret)]) == 1
    error = capsys.readouterr().err
    assert "parameters" in error and "s3cr3t" not in error
    (tmp_path / "Modelfile").write_text(SECRET + "\nFROM a/b\n")
    assert main(["create", "x", "-f", str(tmp_path / "Modelfile")]) == 1
    error = capsys.readouterr().err
    assert "s3cr3t" not in error and "19000" not in error
    (tmp_path / "Modelfile").write_text("FROM a/b\nSYTEM hi\n")
    assert main(["create", "x", "-f", str(tmp_path / "Modelfile")]) == 1
    assert "Modelfile:2: unknown instruction 'SYTEM'" in capsys.readouterr().err
