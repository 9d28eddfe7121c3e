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
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
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
    report = run_engine_bench(spec)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2))
    plot_engine(report, a.plot or a.json.with_suffix(".png"))
    print(
        json.dumps(
            {"results": {k: v["vs_base"] for k, v in report["results"].items()}, "ratios": report["ratios"]}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
