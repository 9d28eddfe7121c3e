#!/usr/bin/env python
"""Build the embedded loraplex demo (tiny Llama base + BPE tokenizer + 3 LoRA adapters).

Fully offline and deterministic; a few minutes on two CPU cores. Example:

    python scripts/build_demo.py --out models/demo --seed 0 --force
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from loraplex.demo import build as demo_build


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Build the embedded demo: tokenizer, tiny Llama base model and the "
        "intent/sentiment/entities LoRA adapters, offline and deterministically.",
    )
    parser.add_argument("--out", type=Path, default=Path("models/demo"), help="output directory (default: models/demo)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the demo is already built")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument(
        "--free-parts",
        choices=["train", "all"],
        default=demo_build.DemoConfig().free_parts,
        help="free-phrasing parts the adapters train on: 'train' holds the dev parts out, so "
        "`eval_demo.py --split free_dev` scores unseen phrasings (how the settings were chosen); "
        "'all' is the shipped demo (default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if demo_build.demo_is_built(args.out) and not args.force:
        print(f"demo already built at {args.out} (use --force to rebuild)")
        return 0
    start = time.perf_counter()
    config = demo_build.DemoConfig(free_parts=args.free_parts)
    manifest = demo_build.build_demo(
        args.out, seed=args.seed, force=args.force, progress=not args.no_progress, config=config
    )
    elapsed = time.perf_counter() - start
    summary = {
        "out": str(args.out),
        "seed": manifest["seed"],
        "base_parameters": manifest["base_model"]["parameters"],
        "adapters": sorted(manifest["adapters"]),
        "timings": manifest["timings"],
    }
    print(json.dumps(summary, indent=2))
    print(f"built in {elapsed:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
