#!/usr/bin/env python
"""Run the embedded demo: build it if missing, then answer one request per composition mode.

    python scripts/demo.py --models models/demo
    python scripts/demo.py --message "Where is my order ORD-12345? jane@example.com"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=Path("models/demo"), help="demo artifacts folder (built if missing)")
    p.add_argument("--message", default="Hi, I was charged twice for order ORD-48213 and I'm really annoyed. Reach me at sam.lee@example.com",
                   help="customer message to run through every composition")
    p.add_argument("--max-tokens", type=int, default=24)
    return p.parse_args()


def main() -> int:
    a = parse_args()
    from loraplex.config.engine import EngineConfig
    from loraplex.demo.build import build_demo, demo_is_built
    from loraplex.demo.data import format_prompt
    from loraplex.experts.engine import Engine, Request

    if not demo_is_built(a.models):
        print(f"building the demo into {a.models} (first run only, a few minutes)...", flush=True)
        build_demo(a.models)
    engine = Engine.from_config(EngineConfig(base_model=str(a.models / "base"), adapter_roots=[str(a.models / "adapters")], max_slots=4, max_host_adapters=8))
    print(f"adapters: {engine.store.available()}")
    ask = {
        "intent": format_prompt("What is the customer's intent?", a.message),
        "sentiment": format_prompt("How does the customer feel? Answer positive, negative or neutral.", a.message),
        "entities": format_prompt("Extract the order id and email as JSON.", a.message),
    }
    cases = [
        ("base model", ask["intent"], None),
        ("single intent", ask["intent"], {"mode": "single", "adapter": "intent"}),
        ("single sentiment", ask["sentiment"], {"mode": "single", "adapter": "sentiment"}),
        ("single entities", ask["entities"], {"mode": "single", "adapter": "entities"}),
        ("stack intent+sentiment", ask["intent"], {"mode": "stack", "adapters": ["intent", "sentiment"]}),
        ("blend delta 0.8/0.2", ask["sentiment"], {"mode": "blend", "weights": {"sentiment": 0.8, "intent": 0.2}}),
        ("blend logits 0.8/0.2", ask["sentiment"], {"mode": "blend", "weights": {"sentiment": 0.8, "intent": 0.2}, "space": "logits"}),
        ("moe top-2 (given scores)", ask["entities"], {"mode": "moe", "top_k": 2, "weights": {"entities": 0.9, "intent": 0.1}}),
        ("chain entities -> intent", a.message, {"mode": "chain", "stages": [
            {"adapter": "entities", "prompt": format_prompt("Extract the order id and email as JSON.", "{input}")},
            {"adapter": "intent", "prompt": format_prompt("Given the extracted fields {previous}, what is the intent?", "{input}")}]}),
    ]
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
