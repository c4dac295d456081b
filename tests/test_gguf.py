"""GGUF files: the header read without the gguf package's full parse, the file's own quantization level, and
hostile files that must never break a listing."""

from pathlib import Path

import numpy as np
import pytest

from hllama.models.footprint import local_footprint
from hllama.models.ggufheader import FILE_TYPES, NotGguf, read_header

gguf = pytest.importorskip("gguf", reason="the gguf package writes the test files (pip install 'hllama[gguf]')")


def _write(path: Path, *, file_type: int = 3) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_context_length(2048)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_file_type(file_type)
    writer.add_chat_template("{{ messages }}")
    writer.add_token_list([f"token{index}" for index in range(3000)])  # a vocabulary: an array of strings
    writer.add_token_scores([0.5] * 3000)
    writer.add_array("test.nested_numbers", [1, 2, 3])
    writer.add_tensor("token_embd.weight", np.zeros((100, 64), dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((64, 64), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_header_is_read_as_the_gguf_package_reads_it(tmp_path: Path):
    path = _write(tmp_path / "model.Q4_1.gguf")
    header = read_header(path)
    reference = gguf.GGUFReader(str(path))
    for key, field in reference.fields.items():
        if key.startswith("GGUF."):  # the reader's own entries for the file's counts
            continue
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            assert key not in header.metadata  # skipped, not read
        else:
            assert header.metadata[key] == pytest.approx(field.contents())
    assert [(name, shape) for name, _, shape in header.tensors] == [
        (tensor.name, [int(dim) for dim in tensor.shape]) for tensor in reference.tensors]
    assert header.file_type == "Q4_1" and header.version == 3


def test_a_gguf_footprint_keeps_the_files_own_level(tmp_path: Path):
    _write(tmp_path / "model.gguf", file_type=15)
    footprint = local_footprint(tmp_path, gguf_file="model.gguf")
    assert footprint.format == "gguf" and footprint.quantization == "Q4_K_M"
    assert footprint.parameters == 100 * 64 + 64 * 64 + 64
    assert footprint.config == {"model_type": "llama", "num_hidden_layers": 2, "max_position_embeddings": 2048,
                                "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
                                "chat_template": "{{ messages }}"}


def test_ollama_sees_the_files_level_and_the_precision_it_runs_at_separately(tmp_path: Path):
    from hllama.models.footprint import plan
    from hllama.models.hardware import Budget
    from hllama.options import LoadOptions
    from hllama.runtime.modelinfo import details, model_info

    _write(tmp_path / "model.gguf", file_type=3)
    load_plan = plan(local_footprint(tmp_path, gguf_file="model.gguf"), load=LoadOptions(), context=None,
                     budget=Budget(2**34, "cpu", "test"))
    assert details(load_plan)["quantization_level"] == "Q4_1" and details(load_plan)["format"] == "gguf"
    assert model_info(load_plan)["hllama.precision"] == "float32"


def test_file_types_are_named_as_ollama_names_them():
    assert (FILE_TYPES[0], FILE_TYPES[1], FILE_TYPES[3], FILE_TYPES[7], FILE_TYPES[15], FILE_TYPES[32]) == (
        "F32", "F16", "Q4_1", "Q8_0", "Q4_K_M", "BF16")


def test_every_cut_of_a_header_is_refused_cleanly(tmp_path: Path):
    whole = _write(tmp_path / "model.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    lengths = [*range(0, 300), *range(300, len(whole), 97)]
    refused = 0
    for length in lengths:
        cut.write_bytes(whole[:length])
        try:
            read_header(cut)
        except NotGguf:
            refused += 1
            continue
        break  # the first cut that reads: it holds the whole header
    assert refused > 500 and read_header(cut) == read_header(tmp_path / "model.gguf")


@pytest.mark.parametrize("data", [
    b"",
    b"GGML" + bytes(20),
    b"GGUF" + (1).to_bytes(4, "little") + bytes(16),  # version 1
    b"GGUF" + (3).to_bytes(4, "little") + (2**60).to_bytes(8, "little") + bytes(8),  # absurd counts
    b"GGUF" + (3).to_bytes(4, "little") + bytes(8) + (1).to_bytes(8, "little")
    + (2**62).to_bytes(8, "little"),  # a key longer than the file
    b"GGUF" + (3).to_bytes(4, "little") + bytes(8) + (1).to_bytes(8, "little") + (1).to_bytes(8, "little") + b"k"
    + (9).to_bytes(4, "little") + (8).to_bytes(4, "little") + (2**61).to_bytes(8, "little"),  # a huge string array
    b"GGUF" + (3).to_bytes(4, "little") + bytes(8) + (1).to_bytes(8, "little") + (1).to_bytes(8, "little") + b"k"
    + (77).to_bytes(4, "little"),  # an unknown value type
])
def test_hostile_headers_are_refused(tmp_path: Path, data: bytes):
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(NotGguf):
        read_header(path)
    footprint = local_footprint(tmp_path, gguf_file="bad.gguf")  # a listing still works: only its size is known
    assert footprint.parameters == 0 and footprint.files_bytes == len(data) and footprint.quantization is None


def test_a_broken_gguf_file_is_one_clear_line_not_a_traceback(tmp_path: Path, hllama_home: Path, capsys):
    from hllama.cli import main

    cut = tmp_path / "cut.gguf"
    cut.write_bytes(_write(tmp_path / "model.gguf").read_bytes()[:100])
    assert main(["run", str(cut), "hi"]) == 1
    assert capsys.readouterr().err == f"Error: cannot load '{cut}': the file ends inside its header\n"


def test_a_gguf_file_that_does_not_say_its_level_reports_none(tmp_path: Path):
    from hllama.models.footprint import plan
    from hllama.models.hardware import Budget
    from hllama.options import LoadOptions
    from hllama.runtime.modelinfo import details

    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + bytes(4))
    load_plan = plan(local_footprint(tmp_path, gguf_file="bad.gguf"), load=LoadOptions(), context=None,
                     budget=Budget(2**34, "cpu", "test"))
    assert details(load_plan)["quantization_level"] == ""  # not the F32 it would be dequantized to
