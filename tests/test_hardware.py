import gc
import os
from pathlib import Path

import psutil
import pytest

from hllama.config import load_settings
from hllama.models.footprint import (
    Footprint,
    estimate,
    footprint_from_tensors,
    gguf_config,
    local_footprint,
    plan,
    read_safetensors_header,
)
from hllama.models.hardware import Budget, Gpu, Hardware, detect_hardware, memory_budget
from hllama.options import LoadOptions
from hllama.units import format_bytes

CONFIG = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096,
          "max_position_embeddings": 32768}
# A 7B-like model: 6.5B parameters in linear layers, 0.5B in embeddings and norms, stored as bf16.
BIG = Footprint(files_bytes=14 * 10**9, parameters=7 * 10**9, quantizable=int(6.5 * 10**9), config=CONFIG)


def test_without_a_gpu_the_budget_is_available_ram():
    hardware = detect_hardware()
    assert hardware.gpus == () and hardware.device == "cpu"  # these machines have no GPU (or a CPU torch)
    budget = memory_budget(load_settings(), hardware)
    assert budget.device == "cpu" and "system RAM" in budget.source
    assert 0 < budget.bytes <= psutil.virtual_memory().total


def test_gpus_are_the_budget_when_present():
    hardware = Hardware(gpus=(Gpu(0, "NVIDIA H100", 80 * 2**30, 70 * 2**30), Gpu(1, "NVIDIA H100", 80 * 2**30,
                                                                                   60 * 2**30)),
                        ram_total=2**40, ram_available=2**39)
    budget = memory_budget(load_settings(), hardware)
    assert (budget.bytes, budget.device) == (130 * 2**30, "cuda")
    assert "2 GPU(s): NVIDIA H100" in budget.source


def test_memory_budget_variable_overrides_detection(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HLLAMA_MEMORY_BUDGET", "6GiB")
    budget = memory_budget(load_settings())
    assert (budget.bytes, budget.source) == (6 * 2**30, "HLLAMA_MEMORY_BUDGET")


def test_estimates_for_each_precision():
    full = estimate(BIG, precision="bfloat16", context=4096, device="cuda")
    assert full.weights == 14 * 10**9
    assert full.kv_cache == 2 * 32 * 8 * 128 * 4096 * 2  # K and V, layers, KV heads, head size, tokens, bf16
    assert full.rule_of_thumb == 21 * 10**9
    assert full.total == full.weights + full.kv_cache + full.overhead
    eight = estimate(BIG, precision="8bit", context=4096, device="cuda")
    four = estimate(BIG, precision="4bit", context=4096, device="cuda")
    assert eight.weights == int(6.5e9 * 1.02 + 0.5e9 * 2)
    assert four.weights < eight.weights < full.weights
    cpu = estimate(BIG, precision="float32", context=None, device="cpu")
    assert cpu.weights == 28 * 10**9 and cpu.context == 4096  # unset ctx: 4096, within the model's own


def test_auto_picks_the_best_precision_that_fits():
    def budget(gib: float) -> Budget:
        return Budget(int(gib * 2**30), "cuda", "test")

    auto = LoadOptions(quantize="auto")
    assert plan(BIG, load=auto, context=4096, budget=budget(40)).chosen.precision == "bfloat16"
    assert plan(BIG, load=auto, context=4096, budget=budget(10)).chosen.precision == "8bit"
    assert plan(BIG, load=auto, context=4096, budget=budget(6)).chosen.precision == "4bit"
    refused = plan(BIG, load=auto, context=4096, budget=budget(2))
    assert not refused.fits and refused.chosen.precision == "4bit"
    too_big = plan(BIG, load=LoadOptions(), context=4096, budget=budget(10))
    assert not too_big.fits and too_big.hint() == ("fits with --load-in-8bit (quantize: 8bit in its modelfile, "
                                                   "or quantize: auto for the best precision that fits)")


def test_footprint_from_safetensors_headers(tiny_model_dir: Path):
    footprint = local_footprint(tiny_model_dir)
    tensors = read_safetensors_header(tiny_model_dir / "model.safetensors")
    assert footprint.parameters == sum(_count(shape) for _, _, shape in tensors)
    assert 0 < footprint.quantizable < footprint.parameters  # embeddings and norms are not quantized
    assert footprint.files_bytes == (tiny_model_dir / "model.safetensors").stat().st_size
    assert footprint.config["num_hidden_layers"] == 2


def test_footprint_from_tensor_list_classifies_layers():
    footprint = footprint_from_tensors(
        [("model.embed_tokens.weight", "BF16", [100, 8]), ("model.layers.0.mlp.up_proj.weight", "BF16", [16, 8]),
         ("model.norm.weight", "BF16", [8])], files_bytes=10, config={})
    assert (footprint.parameters, footprint.quantizable) == (936, 128)


def test_estimate_against_measured_memory(tiny_model_dir: Path):
    """The better estimate's weights match what transformers reports once loaded."""
    from transformers import AutoModelForCausalLM

    footprint = local_footprint(tiny_model_dir)
    guess = estimate(footprint, precision="float32", context=256, device="cpu")
    process = psutil.Process(os.getpid())
    gc.collect()
    before = process.memory_info().rss
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    grown = process.memory_info().rss - before
    measured = model.get_memory_footprint()
    assert guess.weights == pytest.approx(measured, rel=0.01)
    assert guess.total >= grown  # the overhead covers what loading really took here
    del model


def test_gguf_metadata_stands_in_for_config_json():
    metadata = {"general.architecture": "qwen2", "qwen2.block_count": 24, "qwen2.attention.head_count": 14,
                "qwen2.attention.head_count_kv": 2, "qwen2.embedding_length": 896, "qwen2.context_length": 32768,
                "tokenizer.chat_template": "{{ tools }}", "general.file_type": 15}
    config = gguf_config(metadata)
    assert config == {"model_type": "qwen2", "num_hidden_layers": 24, "num_attention_heads": 14,
                      "num_key_value_heads": 2, "hidden_size": 896, "max_position_embeddings": 32768,
                      "chat_template": "{{ tools }}"}
    footprint = Footprint(files_bytes=1, parameters=10, config=config)
    assert estimate(footprint, precision="float32", context=1000, device="cpu").kv_cache == 2 * 24 * 2 * 64 * 1000 * 4
    assert gguf_config({}) == {}


def test_format_bytes():
    assert [format_bytes(n) for n in (512, 1500, 2_500_000, 7 * 10**9)] == ["512 B", "1.5 KB", "2.5 MB", "7.0 GB"]


def _count(shape: list[int]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


@pytest.mark.parametrize("flags, expected", [
    ("fpu sse2 avx2 avx512f avx512_bf16 amx_tile", {"bfloat16"}),
    ("fpu avx512f amx_bf16 amx_fp16 avx512_fp16", {"bfloat16", "float16"}),
    ("fpu sse2 avx2 avx512f", set()),
])
def test_cpu_half_precisions_come_from_its_flags(flags: str, expected: set[str]):
    from hllama.models.hardware import cpu_half_precisions

    assert cpu_half_precisions(f"processor\t: 0\nflags\t\t: {flags}\nbugs\t\t: spectre\n") == expected


def test_a_gpu_has_bfloat16_from_ampere_on():
    ampere = Gpu(0, "NVIDIA A10", 24 * 2**30, 20 * 2**30, (8, 6))
    turing = Gpu(1, "Tesla T4", 16 * 2**30, 15 * 2**30, (7, 5))
    assert ampere.half_precisions == {"bfloat16", "float16"} and turing.half_precisions == {"float16"}
    mixed = memory_budget(load_settings(), Hardware(gpus=(ampere, turing), ram_total=2**40, ram_available=2**39))
    assert mixed.half_precisions == {"float16"}  # what every GPU of the budget runs


@pytest.mark.parametrize("stored, device, half, chosen", [
    ("bfloat16", "cpu", {"bfloat16"}, "bfloat16"),  # AVX-512 BF16 / AMX: the checkpoint as it is
    ("bfloat16", "cpu", set(), "float32"),  # converting every value would be slower than float32
    ("float16", "cpu", {"bfloat16"}, "float32"),
    ("float16", "cpu", {"bfloat16", "float16"}, "float16"),
    ("float32", "cpu", {"bfloat16"}, "float32"),
    (None, "cpu", {"bfloat16"}, "float32"),
    ("bfloat16", "cuda", {"bfloat16", "float16"}, "bfloat16"),
    ("bfloat16", "cuda", {"float16"}, "float16"),  # a GPU before Ampere
    ("float16", "cuda", {"bfloat16", "float16"}, "float16"),
    ("float32", "cuda", {"bfloat16", "float16"}, "bfloat16"),
    ("float32", "cuda", {"float16"}, "float16"),
])
def test_auto_loads_the_checkpoints_dtype_where_the_hardware_runs_it(stored, device, half, chosen):
    budget = Budget(2**40, device, "test", frozenset(half))
    footprint = Footprint(files_bytes=10**6, parameters=5 * 10**5, config=CONFIG, dtype=stored)
    assert plan(footprint, load=LoadOptions(dtype="auto"), context=None, budget=budget).chosen.precision == chosen
    assert plan(footprint, load=LoadOptions(dtype="float32"), context=None, budget=budget).chosen.precision == \
        "float32"  # an explicit dtype always wins


def test_the_checkpoints_dtype_is_read_from_its_headers_or_config():
    tensors = [("model.embed_tokens.weight", "BF16", [1000, 64]), ("model.layers.0.mlp.weight", "BF16", [64, 64]),
               ("model.norm.weight", "F32", [64])]
    assert footprint_from_tensors(tensors, files_bytes=1, config={}).dtype == "bfloat16"
    assert footprint_from_tensors([], files_bytes=1, config={"torch_dtype": "float16"}).dtype == "float16"
    assert footprint_from_tensors([], files_bytes=1, config={"dtype": "int8"}).dtype is None
    bf16 = estimate(BIG, precision="bfloat16", context=4096, device="cpu")
    f32 = estimate(BIG, precision="float32", context=4096, device="cpu")
    assert f32.kv_cache == 2 * bf16.kv_cache  # the KV cache is kept in the precision the model computes in


def test_a_load_that_converts_holds_the_stored_files_until_its_kv_cache_would():
    """bench/memory.py: a bfloat16 checkpoint made float32 peaks at the float32 weights plus the bfloat16 pages."""
    from hllama.models.footprint import GGUF_TOKENIZER_BYTES

    config = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64}
    stored = Footprint(files_bytes=10**9, parameters=5 * 10**8, config=config, dtype="bfloat16")
    upcast = estimate(stored, precision="float32", context=128, device="cpu")
    assert upcast.converting == 10**9 > upcast.kv_cache
    assert upcast.total == upcast.weights + 10**9 + upcast.overhead
    assert estimate(stored, precision="bfloat16", context=128, device="cpu").converting == 0  # loaded as stored
    assert estimate(stored, precision="float32", context=128, device="cuda").converting == 0  # host memory
    gguf = Footprint(files_bytes=10**8, parameters=10**8, config=config, format="gguf", dtype="float32")
    assert estimate(gguf, precision="float32", context=128, device="cpu").converting == 10**8 + GGUF_TOKENIZER_BYTES
    long_context = estimate(stored, precision="float32", context=10**6, device="cpu")
    assert long_context.total == long_context.weights + long_context.kv_cache + long_context.overhead
