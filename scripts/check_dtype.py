#!/usr/bin/env python
"""bf16 against float32 on the demo: held-out exact-match accuracy per task and greedy agreement.

python scripts/check_dtype.py --models models/demo --n 200 --json docs/dtype_check.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from loraplex.demo import build as demo_build
from loraplex.demo.dtype_check import compare_dtypes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=Path("models/demo"), help="built demo directory")
    p.add_argument("--n", type=int, default=200, help="held-out examples per task")
    p.add_argument("--seed", type=int, default=0, help="held-out data seed")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma list; the first is the reference")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if not demo_build.demo_is_built(a.models):
        print(f"no built demo at {a.models}; run scripts/build_demo.py first", file=sys.stderr)
        return 2
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    out = compare_dtypes(a.models, a.n, a.seed, tuple(a.dtypes.split(",")))
    text = json.dumps(out, indent=2)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
