#!/usr/bin/env python
"""Chaos run: steady load on the demo app while a random expert replica is killed every few seconds.
Counts lost (connection error / timeout) and non-200/503 responses: both must be zero. Loopback only.

    python scripts/chaos.py --minutes 2 --kill-every 20 --json docs/chaos.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=Path("config/serve.yaml"))
    p.add_argument("--port", type=int, default=18300)
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--clients", type=int, default=6, help="closed-loop clients")
    p.add_argument("--kill-every", type=float, default=20.0, help="seconds between replica kills")
    p.add_argument("--replicas", type=int, default=2, help="replicas per expert group")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> int:
    a = parse_args()
    import httpx
    import ray
    import yaml

    from loraplex.bench.cluster import start_local_app, stop_local_app
    from loraplex.demo.data import TASKS, make_examples

    groups = yaml.safe_load(a.config.read_text())["applications"][0]["args"]["groups"]
    for g in groups:
        g["num_replicas"] = a.replicas
    url = start_local_app(a.config, a.port, {"base_model": "models/demo/base", "adapter_roots": ["models/demo/adapters"], "groups": groups})
    rng = random.Random(a.seed)
    pool = [(t, e.prompt) for t in TASKS for e in make_examples(t, 20, a.seed, "heldout")]
    outcomes: list[str] = []
    kills: list[dict] = []
    stop = threading.Event()

    def client(i: int) -> None:
        r = random.Random(i)
        with httpx.Client(timeout=90) as c:
            while not stop.is_set():
                task, prompt = r.choice(pool)
                try:
                    outcomes.append(str(c.post(f"{url}/v1/completions", json={"model": task, "prompt": prompt, "max_tokens": 24}).status_code))
                except httpx.HTTPError as e:
                    outcomes.append(f"lost:{type(e).__name__}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    for t in threads:
        t.start()
    end = time.time() + a.minutes * 60
    try:
        while time.time() < end:
            time.sleep(min(a.kill_every, max(0.0, end - time.time())))
            actors = [x for x in ray.util.list_named_actors(all_namespaces=True) if "expert_" in x["name"]]
            if actors and time.time() < end:
                victim = rng.choice(actors)
                ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
                kills.append({"t": round(time.time() - (end - a.minutes * 60), 1), "actor": victim["name"]})
                print(f"killed {victim['name']}", flush=True)
    finally:
        stop.set()
        for t in threads:
            t.join()
        stop_local_app()
    counts = {k: outcomes.count(k) for k in sorted(set(outcomes))}
    bad = sum(v for k, v in counts.items() if k not in ("200", "503"))
    report = {"setup": {k: str(v) for k, v in vars(a).items()}, "kills": kills, "counts": counts, "lost_or_unexpected": bad}
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
