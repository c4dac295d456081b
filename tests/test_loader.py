import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hllama.aliases.registry import Registry
from hllama.aliases.resolve import Overrides, resolve
from hllama.config import load_settings
from hllama.engine import build_prompt, load_model, stream
from hllama.errors import ModelNotDownloaded, ModelTooLarge, NoModelAtPath
from hllama.models.hardware import Budget, memory_budget
from hllama.models.source import locate

from .tinymodel import REPO_ID, REVISION


def _resolve(name: str, **load):
    settings = load_settings()
    overrides = Overrides.model_validate({"load": load, "parameters": {"temperature": 0, "max_new_tokens": 40}})
    return resolve(name, settings=settings, registry=Registry(settings.modelfiles_dir), cli=overrides)


def _answer(loaded, question: str = "Say hello.") -> str:
    ids = build_prompt(loaded.tokenizer, [{"role": "user", "content": question}]).ids
    *_, finished = stream(loaded, ids, _resolve(REPO_ID).parameters)
    return finished.text


def test_loads_a_hub_model_from_the_cache(tiny_cache: Path):
    loaded = load_model(_resolve(REPO_ID), budget=memory_budget(load_settings()))
    assert loaded.source.folder == tiny_cache / "models--hllama-test--tiny-chat" / "snapshots" / REVISION
    assert loaded.precision == "float32" and loaded.memory_bytes > 0 and loaded.context_length == 256
    assert _answer(loaded) == "Hello there, my friend! How are you today?"


def test_locate(tiny_model_dir: Path, tmp_path: Path):
    assert locate(str(tiny_model_dir)).folder == tiny_model_dir
    with pytest.raises(ModelNotDownloaded, match="'org/not-here' not found, try pulling it first"):
        locate("org/not-here")
    for nothing in (tmp_path / "nothing", tmp_path, Path("/etc/passwd"), Path("/dev/zero.gguf")):
        with pytest.raises(NoModelAtPath, match="no model at"):
            locate(str(nothing))
    (tmp_path / "fake.gguf").write_text("not a GGUF file")
    with pytest.raises(NoModelAtPath):
        locate(str(tmp_path / "fake.gguf"))
    (tmp_path / "fake.gguf").unlink()
    (tmp_path / "model.Q4.gguf").write_bytes(b"GGUF")
    assert locate(str(tmp_path / "model.Q4.gguf")) == type(locate(str(tiny_model_dir)))(tmp_path, "model.Q4.gguf")


def test_refuses_a_model_that_does_not_fit_unless_forced(tiny_model_dir: Path):
    resolved = _resolve(str(tiny_model_dir))
    small = Budget(10 * 2**20, "cpu", "HLLAMA_MEMORY_BUDGET")
    with pytest.raises(ModelTooLarge) as caught:
        load_model(resolved, budget=small)
    message = str(caught.value)
    assert message == (f"model requires more system memory (64.5 MiB) than is available (10.0 MiB): the estimate "
                       f"for '{tiny_model_dir}' at float32 with a 256-token context, against HLLAMA_MEMORY_BUDGET")
    assert load_model(resolved, budget=small, force=True).precision == "float32"


def test_quantize_auto_takes_the_best_precision_that_fits(tiny_model_dir: Path):
    from hllama.models.source import plan_load

    resolved = _resolve(str(tiny_model_dir), quantize="auto")
    source = locate(str(tiny_model_dir))
    settings = {"load": resolved.load, "context": resolved.parameters.ctx}
    estimates = {e.precision: e.total for e in plan_load(source, Budget(2**40, "cpu", "t"), **settings).alternatives}
    just_under_full = Budget(estimates["float32"] - 1, "cpu", "test")
    assert plan_load(source, just_under_full, **settings).chosen.precision == "8bit"
    assert plan_load(source, Budget(2**40, "cpu", "t"), **settings).chosen.precision == "float32"


@pytest.mark.parametrize("precision, layer", [("8bit", "Linear8bitLt"), ("4bit", "Linear4bit")])
def test_bitsandbytes_loading_is_real(tiny_model_dir: Path, precision: str, layer: str):
    pytest.importorskip("bitsandbytes")
    loaded = load_model(_resolve(str(tiny_model_dir), quantize=precision), budget=memory_budget(load_settings()))
    assert loaded.precision == precision
    assert type(loaded.model.model.layers[0].mlp.up_proj).__name__ == layer
    full = load_model(_resolve(str(tiny_model_dir)), budget=memory_budget(load_settings()))
    assert loaded.memory_bytes < full.memory_bytes
    assert _answer(loaded).startswith("Hello there")


MISSING_BNB = """
import sys
sys.modules["bitsandbytes"] = None  # as if it were not installed
from hllama.cli import main
raise SystemExit(main(["run", sys.argv[1], "hi", "--load-in-4bit"]))
"""


def test_a_clear_error_where_bitsandbytes_cannot_run(tiny_model_dir: Path):
    result = subprocess.run([sys.executable, "-c", MISSING_BNB, str(tiny_model_dir)], capture_output=True,
                            text=True, env=os.environ.copy(), timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: 4bit loading needs bitsandbytes, which is not installed: pip install 'hllama[quant]' "
        "(or load without --load-in-8bit/--load-in-4bit)")
    assert "Traceback" not in result.stderr


def test_a_clear_error_where_bitsandbytes_is_installed_but_cannot_run(tiny_model_dir: Path, tmp_path: Path):
    broken = tmp_path / "site" / "bitsandbytes"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise RuntimeError("CUDA Setup failed despite GPU being available")\n')
    env = {**os.environ, "PYTHONPATH": str(broken.parent)}
    result = subprocess.run([sys.executable, "-m", "hllama", "run", str(tiny_model_dir), "hi", "--load-in-8bit"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: bitsandbytes cannot run on this machine (CUDA Setup failed despite GPU being available); "
        "load without quantization, or install a bitsandbytes build for this hardware")


def test_a_bfloat16_checkpoint_loads_as_bfloat16_where_the_cpu_runs_it(tiny_model_dir: Path, tmp_path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    from hllama.options import Parameters

    folder = tmp_path / "tiny-bf16"
    shutil.copytree(tiny_model_dir, folder)
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(folder)
    resolved = _resolve(str(folder))
    native = load_model(resolved, budget=Budget(2**40, "cpu", "test", frozenset({"bfloat16"})))
    assert native.precision == "bfloat16" and native.model.dtype == torch.bfloat16
    assert native.plan.footprint.dtype == "bfloat16"
    *_, finished = stream(native, native.tokenizer("Say hello.")["input_ids"], Parameters(temperature=0,
                                                                                          max_new_tokens=5))
    assert finished.stats.generated_tokens > 0
    converted = load_model(resolved, budget=Budget(2**40, "cpu", "test"))  # a CPU without bfloat16
    assert converted.precision == "float32" and converted.model.dtype == torch.float32
