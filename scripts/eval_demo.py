#!/usr/bin/env python
"""Held-out evaluation of the embedded demo: adapter x task exact-match matrix (template or free phrasing).

    python scripts/eval_demo.py --models models/demo --n 200 \
        --json out/demo_eval.json --markdown out/demo_eval.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from loraplex.demo import build as demo_build
from loraplex.demo import evaluation as demo_eval


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Evaluate the demo base model and each LoRA adapter on every held-out "
        "task (greedy decoding, exact match) with the PEFT multi-adapter backend.",
    )
    parser.add_argument(
        "--models", type=Path, default=Path("models/demo"), help="built demo directory (default: models/demo)"
    )
    parser.add_argument("--n", type=int, default=200, help="held-out examples per task (default: 200)")
    parser.add_argument("--seed", type=int, default=0, help="held-out data seed (default: 0)")
    parser.add_argument(
        "--split",
        choices=sorted(demo_eval.EVAL_SPLITS),
        default="heldout",
        help="heldout: the prompt contract's held-out templates; free_dev: free phrasings from parts disjoint "
        "from training (default: heldout)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="generation batch size (default: 64)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="generation budget (default: 48)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="write the full results as JSON here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the Markdown table here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not demo_build.demo_is_built(args.models):
        print(f"no built demo at {args.models}; run scripts/build_demo.py first", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = demo_eval.evaluate_demo(
        args.models,
        n=args.n,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        split=args.split,
    )
    results["eval_seconds"] = round(time.perf_counter() - start, 1)
    table = demo_eval.render_markdown(results)
    print(table)
    print(f"evaluated in {results['eval_seconds']}s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
