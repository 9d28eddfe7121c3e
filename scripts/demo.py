#!/usr/bin/env python
"""Run the embedded demo: build it if missing, then answer one request per composition mode, all in
one engine call (the cases: loraplex.demo.tour).

    python scripts/demo.py --models models/demo
    python scripts/demo.py --message "Where is my order ORD-12345? jane@example.com"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from loraplex.demo.tour import DEFAULT_MESSAGE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=Path("models/demo"), help="demo artifacts folder (built if missing)")
    p.add_argument("--message", default=DEFAULT_MESSAGE, help="customer message to run through every composition")
    p.add_argument("--max-tokens", type=int, default=24, help="generation budget per request")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    from loraplex.config.engine import EngineConfig
    from loraplex.demo.build import build_demo, demo_is_built
    from loraplex.demo.tour import composition_tour
    from loraplex.experts.engine import Engine, Request

    if not demo_is_built(a.models):
        print(f"building the demo into {a.models} (first run only, a few minutes)...", flush=True)
        build_demo(a.models)
    engine = Engine.from_config(
        EngineConfig(
            base_model=str(a.models / "base"),
            adapter_roots=[str(a.models / "adapters")],
            max_slots=4,
            max_host_adapters=8,
        )
    )
    print(f"adapters: {engine.store.available()}")
    cases = composition_tour(a.message)
    t0 = time.perf_counter()
    results = engine.generate([Request.from_json(p, c, max_tokens=a.max_tokens) for _, p, c in cases])
    dt = time.perf_counter() - t0
    print(f"\nmessage: {a.message}\n")
    for (name, _, _), r in zip(cases, results):
        extra = f"  (stages: {r.stages})" if r.stages else ""
        print(f"{name:28s} -> {r.text!r}{extra}")
    print(f"\n{len(cases)} requests, every mode in one engine call: {dt:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
