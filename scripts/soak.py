#!/usr/bin/env python
"""Bounded soak: steady open-loop load on the demo app for a few minutes; reports status codes,
latency per window and the RSS of every Serve process over time (JSON + PNG). Loopback only.

    python scripts/soak.py --minutes 3 --rate 4 --json docs/soak.json --plot docs/soak.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=Path("config/serve.yaml"))
    p.add_argument("--port", type=int, default=18200)
    p.add_argument("--minutes", type=float, default=3.0, help="soak duration (bounded)")
    p.add_argument("--rate", type=float, default=4.0, help="offered requests/s (Poisson)")
    p.add_argument("--max-requests", type=int, default=5000, help="hard cap on requests sent")
    p.add_argument("--window-s", type=float, default=10.0, help="reporting window")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


async def run_load(url: str, a: argparse.Namespace, samples: list) -> list[tuple[float, int, float]]:
    import httpx

    from loraplex.bench.cluster import serve_processes_rss_mb
    from loraplex.demo.data import TASKS, make_examples

    rng = random.Random(a.seed)
    pool = [(t, e.prompt) for t in TASKS for e in make_examples(t, 30, a.seed, "heldout")]
    results: list[tuple[float, int, float]] = []
    t_start = time.perf_counter()
    end = t_start + a.minutes * 60

    async def one(client, task, prompt):
        t0 = time.perf_counter()
        try:
            r = await client.post(f"{url}/v1/completions", json={"model": rng.choice(["auto", task]), "prompt": prompt, "max_tokens": 32}, timeout=60)
            code = r.status_code
        except Exception:
            code = -1  # timeout / connection error: counted as lost
        results.append((t0 - t_start, code, time.perf_counter() - t0))

    async def sampler():
        while time.perf_counter() < end + 2:
            samples.append((time.perf_counter() - t_start, serve_processes_rss_mb()))
            await asyncio.sleep(1.0)

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=256)) as client:
        tasks, sent = [asyncio.create_task(sampler())], 0
        while time.perf_counter() < end and sent < a.max_requests:
            task, prompt = rng.choice(pool)
            tasks.append(asyncio.create_task(one(client, task, prompt)))
            sent += 1
            await asyncio.sleep(rng.expovariate(a.rate))
        await asyncio.gather(*tasks)
    return results


def main() -> int:
    a = parse_args()
    from loraplex.bench.cluster import start_local_app, stop_local_app

    url = start_local_app(a.config, a.port, {"base_model": "models/demo/base", "adapter_roots": ["models/demo/adapters"]})
    samples: list = []
    try:
        results = asyncio.run(run_load(url, a, samples))
    finally:
        stop_local_app()
    windows = []
    for w0 in range(0, int(a.minutes * 60) + 1, int(a.window_s)):
        rows = [r for r in results if w0 <= r[0] < w0 + a.window_s]
        ok = sorted(dt for _, c, dt in rows if c == 200)
        windows.append({"t": w0, "sent": len(rows), "ok": len(ok), "p50": ok[len(ok) // 2] if ok else None, "p99": ok[min(len(ok) - 1, int(0.99 * len(ok)))] if ok else None,
                        "codes": {str(c): sum(1 for _, cc, _ in rows if cc == c) for c in {c for _, c, _ in rows}}})
    rss = [(t, sum(v.values())) for t, v in samples]
    first, last = (rss[len(rss) // 10][1], rss[-1][1]) if rss else (0, 0)
    report = {"setup": vars(a) | {"json": str(a.json), "plot": str(a.plot), "config": str(a.config)}, "windows": windows,
              "rss_total_mb": rss, "summary": {"sent": len(results), "ok": sum(c == 200 for _, c, _ in results), "lost": sum(c == -1 for _, c, _ in results),
                                               "rss_growth_mb": round(last - first, 1),
                                               "rss_growth_second_half_mb": round(last - rss[len(rss) // 2][1], 1) if rss else 0.0},
              # per process at 10 % of the run and at the end: which one grows, if any
              "rss_by_process_mb": {"at_10pct": samples[len(samples) // 10][1], "last": samples[-1][1]} if samples else {}}
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2))
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        ax1.plot([t for t, _ in rss], [m for _, m in rss])
        ax1.set_xlabel("s")
        ax1.set_ylabel("RSS of all Ray/Serve processes (MiB)")
        ax2.plot([w["t"] for w in windows], [w["p50"] for w in windows], label="p50")
        ax2.plot([w["t"] for w in windows], [w["p99"] for w in windows], label="p99")
        ax2.set_xlabel("s")
        ax2.set_ylabel("latency (s)")
        ax2.legend()
        fig.tight_layout()
        fig.savefig(a.plot, dpi=110)
    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
