#!/usr/bin/env python
"""Benchmark the batched multi-LoRA engine against PEFT and the reference article's per-example loop.

Everything runs side by side in one process on the same random Llama-shaped weights and the same
adapters, interleaved over repeats (this machine is noisy: compare ratios, not seconds). Writes JSON
and a PNG plot. Not a test: nothing here asserts speed. Logic: loraplex.bench.engine.

    python scripts/bench_engine.py --json docs/bench_engine.json --plot docs/bench_engine.png
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from loraplex.bench.engine import EngineBenchSpec, run_engine_bench
from loraplex.bench.fixtures import FixtureSpec
from loraplex.bench.plots import plot_engine


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True, help="where to write the results JSON")
    p.add_argument("--plot", type=Path, default=None, help="PNG plot path (default: JSON path with .png)")
    p.add_argument("--hidden", type=int, default=1024, help="hidden size of the random Llama (heads = hidden / 64)")
    p.add_argument("--layers", type=int, default=8, help="decoder layers")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary size (word-level tokenizer t3..tN)")
    p.add_argument(
        "--adapters", type=int, default=32, help="adapters loaded (and distinct per row in loraplex_distinct)"
    )
    p.add_argument("--rank", type=int, default=16, help="LoRA rank of every adapter")
    p.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj", help="LoRA target modules (comma list)")
    p.add_argument("--batch", type=int, default=32, help="rows per generate call in the main comparison")
    p.add_argument("--prompt-tokens", type=int, default=32, help="random prompt token ids per row")
    p.add_argument("--new-tokens", type=int, default=16, help="tokens generated per row (greedy, EOS ignored)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per config (median reported), after one warm-up")
    p.add_argument(
        "--sweep", default="1,8,32,128", help="adapters-in-batch sweep ('' to skip); batch = max(--batch, n)"
    )
    p.add_argument("--sweep-repeats", type=int, default=2, help="timed runs per config in the sweep")
    p.add_argument(
        "--sweep-configs",
        default="base_only,peft_mixed_batch,loraplex_distinct,loraplex_top2_blend",
        help="configs measured in the sweep (base_only required)",
    )
    p.add_argument("--skip-loop", action="store_true", help="skip the slow per-example loop baseline")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights, the adapters and the prompts")
    p.add_argument(
        "--dtypes",
        default="float32,bfloat16",
        help="comma list; the first gets the sweep and the top-level results, each one a by_dtype entry",
    )
    g = p.add_argument_group("in device memory (the GPU check: bench.device_bench; nothing written to disk)")
    g.add_argument("--in-memory", action="store_true", help="build the model and adapters on --device, no fixture")
    g.add_argument("--device", default="cpu", help="cpu or cuda (with --in-memory)")
    g.add_argument("--dtype", default=None, help="with --in-memory: the one dtype (default bfloat16)")
    g.add_argument("--heads", type=int, default=None, help="attention heads (default hidden / 64; --in-memory)")
    g.add_argument("--kv-heads", type=int, default=None, help="KV heads, GQA (default = heads; --in-memory)")
    g.add_argument("--intermediate", type=int, default=None, help="MLP width (default 2.75 x hidden; --in-memory)")
    g.add_argument("--no-compile", action="store_true", help="with --in-memory: skip the compiled configs")
    return p.parse_args(argv)


def main_in_memory(a: argparse.Namespace) -> int:
    from loraplex.bench.device_bench import DeviceBenchSpec, run_device_bench

    heads = a.heads or max(1, a.hidden // 64)
    spec = DeviceBenchSpec(
        hidden=a.hidden,
        layers=a.layers,
        heads=heads,
        kv_heads=a.kv_heads or heads,
        intermediate=a.intermediate or int(a.hidden * 2.75),
        vocab=a.vocab,
        adapters=a.adapters,
        rank=a.rank,
        targets=tuple(a.targets.split(",")),
        batch=a.batch,
        prompt_tokens=a.prompt_tokens,
        new_tokens=a.new_tokens,
        device=a.device,
        dtype=a.dtype or "bfloat16",
        repeats=a.repeats,
        compile=not a.no_compile,
        seed=a.seed,
    )
    report = run_device_bench(spec, progress=lambda m: print(m, flush=True))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2))
    print(json.dumps({"tok_per_s": {k: v["tok_per_s"] for k, v in report["results"].items()}, **report["ratios"]}))
    return 0


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.in_memory:
        return main_in_memory(a)
    spec = EngineBenchSpec(
        fixture=FixtureSpec(
            hidden=a.hidden,
            layers=a.layers,
            vocab=a.vocab,
            rank=a.rank,
            targets=tuple(a.targets.split(",")),
            seed=a.seed,
        ),
        adapters=a.adapters,
        batch=a.batch,
        prompt_tokens=a.prompt_tokens,
        new_tokens=a.new_tokens,
        threads=a.threads,
        repeats=a.repeats,
        sweep=tuple(int(x) for x in a.sweep.split(",") if x),
        sweep_repeats=a.sweep_repeats,
        sweep_configs=tuple(a.sweep_configs.split(",")),
        skip_loop=a.skip_loop,
    )
    dtypes = a.dtypes.split(",")
    report = run_engine_bench(replace(spec, dtype=dtypes[0]))
    report["by_dtype"] = {dtypes[0]: {"results": report["results"], "ratios": report["ratios"]}}
    for dt in dtypes[1:]:  # the main configs only: the sweep's shape does not depend on the dtype
        other = run_engine_bench(replace(spec, dtype=dt, sweep=(), skip_loop=True))
        report["by_dtype"][dt] = {"results": other["results"], "ratios": other["ratios"]}
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2))
    plot_engine(report, a.plot or a.json.with_suffix(".png"))
    print(
        json.dumps(
            {
                dt: {"tok_per_s": {k: v["tok_per_s"] for k, v in r["results"].items()}, "ratios": r["ratios"]}
                for dt, r in report["by_dtype"].items()
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
