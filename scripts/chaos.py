#!/usr/bin/env python
"""Chaos run: steady load on the demo app while a random expert replica is killed every few seconds.
Counts lost (connection error / timeout) and non-200/503 responses: both must be zero. Loopback only.
Logic: loraplex.bench.chaos. Exit status 1 when any request was lost or unexpected.

    python scripts/chaos.py --minutes 2 --kill-every 20 --json docs/chaos.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from loraplex.bench.chaos import groups_with_replicas, lost_or_unexpected, run_chaos
from loraplex.bench.cluster import start_local_app, stop_local_app

DEMO = {"base_model": "models/demo/base", "adapter_roots": ["models/demo/adapters"]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--config", type=Path, default=Path("config/serve.yaml"), help="Serve YAML whose first application is started"
    )
    p.add_argument("--port", type=int, default=18300, help="Serve HTTP port on 127.0.0.1")
    p.add_argument("--minutes", type=float, default=2.0, help="run duration (bounded)")
    p.add_argument("--clients", type=int, default=6, help="closed-loop clients")
    p.add_argument("--kill-every", type=float, default=20.0, help="seconds between replica kills")
    p.add_argument("--replicas", type=int, default=2, help="replicas per expert group")
    p.add_argument("--json", type=Path, required=True, help="where to write the report JSON")
    p.add_argument("--seed", type=int, default=0, help="seeds the victim choice and the prompt pool")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    url = start_local_app(a.config, a.port, DEMO | {"groups": groups_with_replicas(a.config, a.replicas)})
    try:
        counts, kills = run_chaos(url, a.minutes, a.clients, a.kill_every, a.seed)
    finally:
        stop_local_app()
    bad = lost_or_unexpected(counts)
    report = {
        "setup": {k: str(v) for k, v in vars(a).items()},
        "kills": kills,
        "counts": counts,
        "lost_or_unexpected": bad,
    }
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
