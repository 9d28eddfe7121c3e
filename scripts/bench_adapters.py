#!/usr/bin/env python
"""Adapters at scale: 1,000 rank-16 adapters on disk, Zipf(1.1) popularity, open-loop Poisson load on one group
of 2 replicas (32 device slots and 128 host slots each), against the same load over adapters that are all
resident (pinned on every replica). Reports latency p50/p99 of both, cold-load times (disk -> host, host ->
slot, and how long requests waited for loads), decode-step time with loads in flight vs without (at equal
batch sizes), hit rates per tier, how the hottest adapter's traffic split across replicas, and the name
index against a walk of 10,000 adapter folders. JSON + PNG; not a test (nothing asserts speed).
Logic: loraplex.bench.adapter_scale.

    python scripts/bench_adapters.py --json docs/bench_adapters.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from loraplex.bench.adapter_scale import app_args, build_many, index_bench, run_phase, zipf_arrivals
from loraplex.bench.fixtures import FixtureSpec


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True, help="where to write the results JSON")
    p.add_argument("--plot", type=Path, default=None, help="PNG plot path (default: JSON path with .png)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/loraplex-bench-adapters"), help="fixture (reused)")
    p.add_argument("--adapters", type=int, default=1000, help="adapters on disk")
    p.add_argument("--hidden", type=int, default=1024, help="hidden size of the random Llama")
    p.add_argument("--layers", type=int, default=8, help="decoder layers")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary size")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank of every adapter")
    p.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj", help="LoRA target modules (comma list)")
    p.add_argument("--replicas", type=int, default=2, help="replicas of the one group")
    p.add_argument("--slots", type=int, default=32, help="device slots per replica (max_slots)")
    p.add_argument("--host", type=int, default=128, help="host-memory adapters per replica (max_host_adapters)")
    p.add_argument("--replica-cpus", type=float, default=0.8, help="num_cpus of each replica")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each replica")
    p.add_argument("--rate", type=float, default=2.0, help="offered requests/s (Poisson)")
    p.add_argument("--duration", type=float, default=120.0, help="seconds of arrivals per phase")
    p.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of adapter popularity")
    p.add_argument("--prompt-tokens", type=int, default=32, help="random prompt token ids per request")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens generated per request (EOS ignored)")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout (s)")
    p.add_argument("--index-folders", type=int, default=10000, help="adapter folders in the index benchmark")
    p.add_argument("--phases", default="resident,cold", help="which serving phases to run (comma list)")
    p.add_argument("--port", type=int, default=8765, help="Serve HTTP port")
    p.add_argument("--seed", type=int, default=0, help="seeds weights, popularity draws and prompts")
    return p.parse_args(argv)


def serve_phase(args, base_dir: Path, ad_dir: Path, pinned: list[str], work, hottest: str) -> dict:
    from ray import serve

    from loraplex.bench.cluster import start_local_cluster, stop_local_app, wait_healthy
    from loraplex.deployments.app import build_app

    targets = tuple(args.targets.split(","))
    app = app_args(
        base_dir, ad_dir, pinned, args.replicas, args.slots, args.host, args.replica_cpus, args.threads,
        args.max_tokens, targets, args.rank,
    )  # fmt: skip
    t0 = time.perf_counter()
    url = start_local_cluster(args.port, num_cpus=4)
    try:
        serve.run(build_app(app), name="loraplex", route_prefix="/")
        wait_healthy(url, timeout_s=600)
        started = time.perf_counter() - t0
        import httpx

        warm = [3 + i for i in range(args.prompt_tokens)]
        with httpx.Client(timeout=300) as c:  # first forwards allocate caches; base requests touch no adapter
            for _ in range(2 * args.replicas):
                body = {"model": "base", "prompt": warm, "max_tokens": args.max_tokens, "ignore_eos": True}
                r = c.post(f"{url}/v1/completions", json=body)
                r.raise_for_status()
        out = asyncio.run(run_phase(url, work, args.max_tokens, args.timeout, hottest))
        out["start_s"] = round(started, 1)
        out["pinned"] = len(pinned)
        return out
    finally:
        stop_local_app()


def verdict(report: dict) -> dict:
    res, cold = report["phases"].get("resident"), report["phases"].get("cold")
    out: dict = {}
    if res and cold:
        ratio = cold["client"]["p99_ms"] / res["client"]["p99_ms"]
        out["p99_cold_vs_resident"] = {"ratio": round(ratio, 3), "target": "<= 1.5", "met": ratio <= 1.5}
    if cold:
        steps = cold["replicas"]["decode_step"]
        ratio = steps["loading_vs_arrival"]["ratio"]
        out["decode_step_loading_vs_without"] = {
            "ratio": ratio,
            "target": "<= 1.1",
            "met": ratio is not None and ratio <= 1.1,
            "note": "steps with a load in flight vs steps where a (warm) request arrived without a load; "
            f"vs quiet steps: {steps['loading_vs_idle']['ratio']}",
        }
        split = cold["replicas"]["hottest"]["requests_per_replica"]
        out["hottest_on_every_replica"] = {"split": split, "met": len(split) > 1 and all(v > 0 for v in split.values())}
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    spec = FixtureSpec(args.hidden, args.layers, args.vocab, args.rank, tuple(args.targets.split(",")), args.seed)
    t = time.perf_counter()
    base_dir, ad_dir, names = build_many(spec, args.workdir / "fixture", args.adapters)
    print(f"fixture: {len(names)} adapters in {time.perf_counter() - t:.0f} s", flush=True)
    report: dict = {"command": " ".join(sys.argv), "config": vars(args) | {"json": str(args.json)}, "phases": {}}
    report["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in report["config"].items()}
    phases = args.phases.split(",")
    common = (args.rate, args.duration, args.prompt_tokens, args.vocab, args.seed)
    if "resident" in phases:  # the same load shape over adapters pinned (resident) on every replica
        top = names[: args.slots]
        work = zipf_arrivals(top, args.zipf, *common)
        print(f"resident: {len(work)} requests over {len(top)} pinned adapters", flush=True)
        report["phases"]["resident"] = serve_phase(args, base_dir, ad_dir, top, work, top[0])
        print(json.dumps(report["phases"]["resident"]["client"]), flush=True)
    if "cold" in phases:
        work = zipf_arrivals(names, args.zipf, *common)
        distinct = len({a for _, a, _ in work})
        print(f"cold: {len(work)} requests over {distinct} distinct adapters of {len(names)}", flush=True)
        report["phases"]["cold"] = serve_phase(args, base_dir, ad_dir, [names[-1]], work, names[0])
        report["phases"]["cold"]["distinct_adapters"] = distinct
        print(json.dumps(report["phases"]["cold"]["client"]), flush=True)
    if args.index_folders:
        report["index"] = index_bench(args.workdir / "index", args.index_folders)
        print(f"index: {report['index']}", flush=True)
    report["verdict"] = verdict(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    from loraplex.bench.plots import plot_adapters

    plot_adapters(report, args.plot or args.json.with_suffix(".png"))
    print(json.dumps(report["verdict"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
