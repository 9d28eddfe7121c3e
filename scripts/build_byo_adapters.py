#!/usr/bin/env python
"""Train the "bring your own adapters" LoRAs (priority, summary) on the built demo base model.

Writes, under --out: adapters/<task>/ (PEFT adapter + routing_examples.jsonl, 8 example prompts for
the router), heldout.jsonl (unseen phrasings of all five tasks, {"prompt", "adapter"} per line) and
byo_report.json (training stats, held-out exact match). Needs the demo base model
(python scripts/build_demo.py); offline, seeded, a few minutes on two CPU cores. Example:

    python scripts/build_byo_adapters.py --models models/demo --out models/byo --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from loraplex.demo import byo_build


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models", type=Path, default=Path("models/demo"), help="built demo directory (default: models/demo)"
    )
    parser.add_argument("--out", type=Path, default=Path("models/byo"), help="output directory (default: models/byo)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        report = byo_build.build_byo(args.models, args.out, seed=args.seed, progress=not args.no_progress)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    summary = {
        "out": str(args.out),
        "seed": report["seed"],
        "adapters": {
            task: {k: a[k] for k in ("heldout_accuracy", "base_heldout_accuracy", "final_loss", "steps")}
            for task, a in report["adapters"].items()
        },
        "accuracy_matrix": report["accuracy_matrix"],
        "timings": report["timings"],
    }
    print(json.dumps(summary, indent=2))
    print(f"built in {elapsed:.1f}s; full report: {args.out / byo_build.REPORT_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
