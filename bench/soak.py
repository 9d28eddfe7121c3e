"""Bounded soak: steady open-loop Poisson load on a running app, sampling every Ray/Serve process's RSS each second.

A leak shows as RSS that keeps growing under constant load, so the report gives growth over the run and over
its second half (after warm-up allocations settle), plus status codes and latency per window.
"""

from __future__ import annotations

import asyncio
import random
import time

from loraplex.bench.cluster import serve_processes_rss_mb
from loraplex.bench.workloads import demo_prompts


async def run_load(
    url: str, minutes: float, rate: float, max_requests: int, seed: int, samples: list
) -> list[tuple[float, int, float]]:
    """Offer demo prompts at `rate` req/s for `minutes`, at most `max_requests`; per request (t sent, status, lat s).

    The status is -1 for a lost request (timeout or connection error).
    Half of the requests (at random) ask for `model: "auto"` (MoE routing), the rest name the task's adapter.
    Appends (t, {process: RSS MiB}) to `samples` every second until 2 s after the last send.
    """
    import httpx

    rng = random.Random(seed)
    pool = demo_prompts(30, seed)
    results: list[tuple[float, int, float]] = []
    t_start = time.perf_counter()
    end = t_start + minutes * 60

    async def one(client, task, prompt):
        t0 = time.perf_counter()
        try:
            r = await client.post(
                f"{url}/v1/completions",
                json={"temperature": 0, "model": rng.choice(["auto", task]), "prompt": prompt, "max_tokens": 32},
                timeout=60,
            )
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
        while time.perf_counter() < end and sent < max_requests:
            task, prompt = rng.choice(pool)
            tasks.append(asyncio.create_task(one(client, task, prompt)))
            sent += 1
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)
    return results


def windows(results: list[tuple[float, int, float]], minutes: float, window_s: float) -> list[dict]:
    """Per reporting window (by send time): sent, ok (200), latency p50/p99 of the 200s (s), count per status code."""
    out = []
    for w0 in range(0, int(minutes * 60) + 1, int(window_s)):
        rows = [r for r in results if w0 <= r[0] < w0 + window_s]
        ok = sorted(dt for _, c, dt in rows if c == 200)
        out.append(
            {
                "t": w0,
                "sent": len(rows),
                "ok": len(ok),
                "p50": ok[len(ok) // 2] if ok else None,
                "p99": ok[min(len(ok) - 1, int(0.99 * len(ok)))] if ok else None,
                "codes": {str(c): sum(1 for _, cc, _ in rows if cc == c) for c in {c for _, c, _ in rows}},
            }
        )
    return out


def soak_report(
    setup: dict, results: list[tuple[float, int, float]], samples: list, minutes: float, window_s: float
) -> dict:
    """The soak JSON: windows, total RSS over time, summary (sent/ok/lost, RSS growth), per-process RSS at 10 %/end."""
    rss = [(t, sum(v.values())) for t, v in samples]
    first, last = (rss[len(rss) // 10][1], rss[-1][1]) if rss else (0, 0)
    return {
        "setup": setup,
        "windows": windows(results, minutes, window_s),
        "rss_total_mb": rss,
        "summary": {
            "sent": len(results),
            "ok": sum(c == 200 for _, c, _ in results),
            "lost": sum(c == -1 for _, c, _ in results),
            "rss_growth_mb": round(last - first, 1),
            "rss_growth_second_half_mb": round(last - rss[len(rss) // 2][1], 1) if rss else 0.0,
        },
        # per process at 10 % of the run and at the end: which one grows, if any
        "rss_by_process_mb": {"at_10pct": samples[len(samples) // 10][1], "last": samples[-1][1]} if samples else {},
    }
