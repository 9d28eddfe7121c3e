"""vLLM's own load client (`vllm bench serve --backend openai`) as a step of the serving benchmark, for the
systems it can drive as they are (every request the same body apart from the prompt and LoRA name):
loraplex, loraplex-vllm and vllm-server. It picks a LoRA uniformly at random per request (`--lora-modules`);
Zipf popularity, the compositions mix and the baseline's per-request header need our own load loop
(`bench.load.run_step`), which stays for them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

SUPPORTED = ("loraplex", "loraplex-vllm", "vllm-server")


def bench_command(
    root: str,
    tokenizer: str,
    names: list[str],
    rate: float,
    num_prompts: int,
    prompt_tokens: int,
    max_tokens: int,
    seed: int,
    result: Path,
    max_concurrency: int | None = None,
    stream: bool = True,
) -> list[str]:
    """The `vllm bench serve` command line for one step (plain data: unit tests check it)."""
    cmd = [
        sys.executable, "-m", "loraplex.bench.vllm_cli", "bench", "serve",
        "--backend", "openai", "--base-url", root, "--endpoint", "/v1/completions",
        "--model", tokenizer, "--tokenizer", tokenizer, "--served-model-name", "base",
        "--dataset-name", "random", "--random-input-len", str(prompt_tokens), "--random-output-len", str(max_tokens),
        "--num-prompts", str(num_prompts), "--request-rate", str(rate), "--seed", str(seed),
        "--ignore-eos", "--temperature", "0", "--disable-tqdm",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
        "--save-result", "--result-dir", str(result.parent), "--result-filename", result.name,
    ]  # fmt: skip
    if names:
        cmd += ["--lora-modules", *names]
    if max_concurrency:
        cmd += ["--max-concurrency", str(max_concurrency)]
    if not stream:
        cmd.append("--no-stream")
    return cmd


def step_record(system: str, rate: float, out: dict) -> dict:
    """vLLM's result JSON as one step of ours (the keys `bench.verdict` and the plots read)."""
    sent = out["completed"] + out.get("failed", 0)
    return {
        "system": system,
        "client": "vllm-bench",
        "offered_rps": rate,
        "sent": sent,
        "window_s": round(out["duration"], 2),
        "span_s": round(out["duration"], 2),
        "offered_actual_rps": None,
        "completed": out["completed"],
        "errors": out.get("failed", 0),
        "error_kinds": {"failed": out["failed"]} if out.get("failed") else {},
        "error_rate": round(out.get("failed", 0) / sent, 4) if sent else 0.0,
        "achieved_rps": round(out["request_throughput"], 3),
        "tokens_per_s": round(out["output_throughput"], 1),
        "p50_ms": _r(out.get("median_e2el_ms")),
        "p90_ms": _r(out.get("p90_e2el_ms")),
        "p99_ms": _r(out.get("p99_e2el_ms")),
        "mean_ms": _r(out.get("mean_e2el_ms")),
        "ttft_p50_ms": _r(out.get("median_ttft_ms")),
        "ttft_p99_ms": _r(out.get("p99_ttft_ms")),
        "tpot_p50_ms": _r(out.get("median_tpot_ms")),
        "tpot_p99_ms": _r(out.get("p99_tpot_ms")),
        "itl_p50_ms": _r(out.get("median_itl_ms")),
        "itl_p99_ms": _r(out.get("p99_itl_ms")),
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 1)


def run_vllm_bench(system: str, root: str, rate: float, timeout_s: float, **kw) -> dict:
    """Run one step with `vllm bench serve` and return it as our step record (raises with its output on failure)."""
    with tempfile.TemporaryDirectory(prefix="vllm-bench-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = bench_command(root, result=result, rate=rate, **kw)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0 or not result.is_file():
            raise RuntimeError(
                f"vllm bench serve failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )
        return step_record(system, rate, json.loads(result.read_text()))
