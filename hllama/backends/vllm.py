"""A vLLM server that hllama starts for an alias whose load section says ``engine: vllm``, and stops again.

The server is vLLM's own OpenAI-compatible one (``python -m vllm.entrypoints.openai.api_server``) on a private
loopback port, run by the interpreter the ``vllm_python`` setting names (vLLM pins its own torch and
transformers, so it often lives in an environment of its own). The alias's resolved load settings become its
command line; once it answers, it is an :class:`~hllama.backends.upstream.Upstream` like any engine already running, so
requests reach it the same way. The scheduler starts it on first use, stops it at ``keep_alive`` or to make
room, and starts a new one when the alias's load settings change.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from hllama.aliases.resolve import Resolved
from hllama.backends.upstream import Upstream
from hllama.errors import InvalidOption, ModelLoadError
from hllama.progress import report_progress

log = logging.getLogger(__name__)

#: How long vLLM may take to load and warm up before the alias's request fails (seconds).
START_TIMEOUT = 1800.0

#: hllama's quantize values as vLLM's --quantization: 4-bit in flight through bitsandbytes, 8-bit as FP8.
_QUANTIZATION = {"4bit": "bitsandbytes", "8bit": "fp8"}


def vllm_command(resolved: Resolved, *, port: int, python: str | Path | None = None) -> list[str]:
    """vLLM's command line for the alias: the model under its own name (the one requests ask for), the resolved
    dtype, quantization, context (``ctx`` as ``--max-model-len``), revision and ``trust_remote_code``, then the
    ``vllm`` knobs, then ``args`` as given."""
    load, knobs = resolved.load, resolved.load.vllm
    command = [str(python or sys.executable), "-m", "vllm.entrypoints.openai.api_server", "--model", resolved.model,
               "--host", "127.0.0.1", "--port", str(port), "--dtype", load.dtype or "auto"]
    if resolved.revision:
        command += ["--revision", resolved.revision]
    if load.quantize in _QUANTIZATION:
        command += ["--quantization", _QUANTIZATION[load.quantize]]
    elif load.quantize == "auto":
        raise InvalidOption("quantize: auto is for models hllama loads itself; for vLLM say 8bit, 4bit or none")
    if resolved.parameters.ctx is not None:
        command += ["--max-model-len", str(resolved.parameters.ctx)]
    if load.trust_remote_code:
        command.append("--trust-remote-code")
    if knobs is not None:
        for name in ("tensor_parallel_size", "pipeline_parallel_size", "distributed_executor_backend",
                     "gpu_memory_utilization", "max_num_seqs"):
            if (value := getattr(knobs, name)) is not None:
                command += [f"--{name.replace('_', '-')}", str(value)]
        if knobs.enforce_eager:
            command.append("--enforce-eager")
        command += knobs.args or []
    return command


class ManagedVllm(Upstream):
    """A vLLM server of hllama's own: started here (blocking until it answers: the scheduler loads in a worker
    thread), stopped by :meth:`close`."""

    def __init__(self, resolved: Resolved, *, python: str | Path | None = None, log_dir: Path | None = None,
                 timeout: float = START_TIMEOUT) -> None:
        port = _free_port()
        super().__init__(resolved.name, [f"http://127.0.0.1:{port}/v1"])
        self.context_length = resolved.parameters.ctx or 0  # its --max-model-len, when the alias sets one
        self.precision = f"vLLM, {resolved.load.dtype or 'auto'}"
        command = vllm_command(resolved, port=port, python=python)
        self.log_path = (log_dir or Path.cwd()) / f"vllm-{_file_name(resolved.name)}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting vLLM for '%s' on port %d (log: %s): %s", resolved.name, port, self.log_path,
                 " ".join(command))
        with open(self.log_path, "ab") as output:
            try:
                self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as exc:
                raise ModelLoadError(f"cannot start vLLM with {command[0]}: {exc} (set vllm_python)") from None
        try:
            self._wait_until_ready(f"http://127.0.0.1:{port}", timeout)
        except BaseException:
            self.close()
            raise

    def _wait_until_ready(self, url: str, timeout: float) -> None:
        started = time.monotonic()
        reported = started
        while True:
            if (code := self.process.poll()) is not None:
                raise ModelLoadError(f"vLLM exited with status {code} while starting: {self._log_tail()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    log.info("vLLM for '%s' is ready after %.0f s", self.alias, time.monotonic() - started)
                    return
            except httpx.TransportError:
                pass
            now = time.monotonic()
            if now - started > timeout:
                raise ModelLoadError(f"vLLM did not answer within {timeout:.0f} s: {self._log_tail()}")
            if now - reported >= 2:
                reported = now
                status = f"starting vLLM ({now - started:.0f} s): {self._log_tail(lines=1)}"
                report_progress(status)
                if int(now - started) % 10 < 2:
                    log.info("'%s': %s", self.alias, status)
            time.sleep(0.5)

    def _log_tail(self, *, lines: int = 5) -> str:
        try:
            text = self.log_path.read_bytes()[-4000:].decode(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])[:1000]

    def close(self) -> None:
        """Stop the server and everything it started (its workers share its process group)."""
        super().close()
        process = getattr(self, "process", None)
        if process is None or process.poll() is not None:
            return
        log.info("stopping vLLM for '%s'", self.alias)
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait(timeout=30)


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _file_name(alias: str) -> str:
    return "".join(character if character.isalnum() or character in "-_." else "_" for character in alias)[:100]


def footprint(resolved: Resolved, weights: int, *, device: str, available: int) -> int:
    """What the server will take, for the memory budget: on a GPU, the share of its memory vLLM claims
    (``gpu_memory_utilization``, vLLM's default 0.9); on a CPU, the weights plus its KV cache space
    (``VLLM_CPU_KVCACHE_SPACE`` GiB, default 4)."""
    if device == "cuda":
        share = (resolved.load.vllm.gpu_memory_utilization if resolved.load.vllm else None) or 0.9
        return max(weights, int(available * share))
    try:
        space = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or 4)
    except ValueError:
        space = 4.0
    return weights + int(space * 2**30)
