#!/usr/bin/env python
"""Bounded soak: steady open-loop load on the demo app for a few minutes; reports status codes,
latency per window and the RSS of every Serve process over time (JSON + PNG). Loopback only.
Logic: loraplex.bench.soak.

    python scripts/soak.py --minutes 3 --rate 4 --json docs/soak.json --plot docs/soak.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from loraplex.bench.cluster import start_local_app, stop_local_app
from loraplex.bench.plots import plot_soak
from loraplex.bench.soak import run_load, soak_report

DEMO = {"base_model": "models/demo/base", "adapter_roots": ["models/demo/adapters"]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--config", type=Path, default=Path("config/serve.yaml"), help="Serve YAML whose first application is started"
    )
    p.add_argument("--port", type=int, default=18200, help="Serve HTTP port on 127.0.0.1")
    p.add_argument("--minutes", type=float, default=3.0, help="soak duration (bounded)")
    p.add_argument("--rate", type=float, default=4.0, help="offered requests/s (Poisson)")
    p.add_argument("--max-requests", type=int, default=5000, help="hard cap on requests sent")
    p.add_argument("--window-s", type=float, default=10.0, help="reporting window")
    p.add_argument("--json", type=Path, required=True, help="where to write the report JSON")
    p.add_argument("--plot", type=Path, default=None, help="PNG plot path (none: no plot)")
    p.add_argument(
        "--seed", type=int, default=0, help="seeds the prompt pool, arrivals, prompt choice and auto-vs-adapter choice"
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    url = start_local_app(a.config, a.port, DEMO)
    samples: list = []
    try:
        results = asyncio.run(run_load(url, a.minutes, a.rate, a.max_requests, a.seed, samples))
    finally:
        stop_local_app()
    setup = vars(a) | {"json": str(a.json), "plot": str(a.plot), "config": str(a.config)}
    report = soak_report(setup, results, samples, a.minutes, a.window_s)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2))
    if a.plot:
        plot_soak(report, a.plot)
    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
