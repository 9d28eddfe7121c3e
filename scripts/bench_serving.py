#!/usr/bin/env python
"""Open-loop serving benchmark: loraplex vs the `@serve.multiplexed` PEFT baseline, over HTTP, on one Ray cluster.

Builds a random Llama-shaped bench model with N PEFT adapters (scripts/bench_engine.py's fixture), starts
one local Ray cluster, deploys both apps side by side with the same replica count (1) and the same CPUs
per model replica:

  loraplex   loraplex.deployments.app:build_app, one expert group holding every adapter (max_slots = max_host_adapters = N),
             POST /loraplex/v1/completions  (continuous batching: requests of any adapter join the running batch between decode steps)
  baseline   loraplex.bench.baseline_multiplexed, @serve.multiplexed PEFT adapters, one request at a time,
             POST /baseline/v1/completions + `serve_multiplexed_model_id` header

A consistency check (the same 16 (adapter, prompt) pairs sequentially, then concurrently) counts wrong
outputs per system.

Then it offers open-loop Poisson load (arrivals from a seeded exponential generator, never waiting for
responses; latency counted from the scheduled arrival) with Zipf adapter popularity, sweeping a geometric
ladder of offered rates. Every system gets the identical request sequence at each rate, run back to back
(order rotating per step) so machine noise hits all of them. Per step: completed req/s and tokens/s, latency
p50/p90/p99, errors and timeouts, mean running batch per decode step (loraplex).

Sustainable throughput = the highest offered rate with p99 <= SLO, errors < 1% and achieved >= 90% of
offered. SLO default: 4x the baseline's p50 at the lowest rate (printed). Writes JSON and a PNG.
Not a test: nothing here asserts speed. Only 127.0.0.1 is contacted.

    python scripts/bench_serving.py --json docs/bench_serving.json            # full default run (~15 min on 2 cores)
    python scripts/bench_serving.py --json /tmp/s.json --hidden 128 --layers 2 --vocab 1000 --rates 2,8 --step-seconds 4 --min-requests 0  # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import os
import random
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("loraplex", "baseline")
LABELS = {"loraplex": "loraplex (as shipped)", "baseline": "@serve.multiplexed PEFT baseline"}


def parse_args(argv=None) -> argparse.Namespace:
    class Fmt(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    p = argparse.ArgumentParser(description=__doc__, formatter_class=Fmt)
    p.add_argument("--json", type=Path, required=True, help="where to write the results JSON")
    p.add_argument("--plot", type=Path, default=None, help="PNG plot path (none: the JSON path with .png)")
    g = p.add_argument_group("bench model and adapters (random weights, built into a temp dir)")
    g.add_argument("--hidden", type=int, default=512, help="hidden size (bench_engine uses 1024; smaller keeps the run ~15 min on 2 cores)")
    g.add_argument("--layers", type=int, default=4, help="decoder layers")
    g.add_argument("--vocab", type=int, default=8000, help="vocabulary size (word-level tokenizer t3..tN)")
    g.add_argument("--adapters", type=int, default=32, help="adapters on disk, all served by both systems")
    g.add_argument("--rank", type=int, default=16, help="LoRA rank of every adapter (also loraplex max_rank)")
    g.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj", help="LoRA target modules")
    g.add_argument("--seed", type=int, default=0, help="seeds weights, arrivals, adapter choice and prompts")
    g = p.add_argument_group("deployment (same for both systems unless noted)")
    g.add_argument("--port", type=int, default=18230, help="Serve HTTP port on 127.0.0.1")
    g.add_argument("--ray-cpus", type=float, default=2.0, help="num_cpus of the local Ray cluster")
    g.add_argument("--replica-cpus", type=float, default=0.5, help="num_cpus of the model replica of each system (Ray gives < 2 CPUs 1 torch thread)")
    g.add_argument("--ingress-cpus", type=float, default=0.1, help="loraplex router ingress num_cpus (the baseline has no separate ingress)")
    g.add_argument("--ingress-max-ongoing", type=int, default=256, help="loraplex ingress_max_ongoing_requests (0 = the config default)")
    g.add_argument("--max-batch-size", type=int, default=32, help="loraplex group max_batch_size (requests decoding together)")
    g.add_argument("--batch-wait-s", type=float, default=0.01, help="loraplex group batch_wait_timeout_s (first request after idle waits this long for company)")
    g.add_argument("--max-ongoing", type=int, default=64, help="max_ongoing_requests of each model replica (loraplex expert, baseline)")
    g.add_argument("--max-queued", type=int, default=256, help="max_queued_requests of each model deployment")
    g.add_argument("--baseline-max-models", type=int, default=None, help="baseline max_num_models_per_replica (none: --adapters, so nothing is evicted)")
    g = p.add_argument_group("load")
    g.add_argument("--rates", default="", help="comma list of offered rates in req/s (overrides --rate-min/--rate-max/--rate-factor)")
    g.add_argument("--rate-min", type=float, default=1.0, help="lowest offered rate of the ladder (req/s)")
    g.add_argument("--rate-max", type=float, default=45.0, help="highest offered rate of the ladder (req/s)")
    g.add_argument("--rate-factor", type=float, default=2 ** 0.25,
                   help="geometric ladder step (x1.19: a x1.41 ladder can only report ratios that are powers of 1.41, too coarse for a 3x target)")
    g.add_argument("--step-seconds", type=float, default=20.0, help="arrival window per rate step (at least)")
    g.add_argument("--min-requests", type=int, default=40, help="a step lasts long enough for this many arrivals (capped by --max-step-seconds)")
    g.add_argument("--max-step-seconds", type=float, default=40.0, help="longest arrival window per step")
    g.add_argument("--max-requests", type=int, default=2000, help="hard cap on arrivals per step and system")
    g.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (s); a timed-out request is an error")
    g.add_argument("--cooldown", type=float, default=2.0, help="idle seconds between steps")
    g.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent of adapter popularity (rank k has weight 1/k^s)")
    g.add_argument("--prompt-tokens", type=int, default=32, help="random prompt token ids per request")
    g.add_argument("--max-tokens", type=int, default=16, help="tokens generated per request (loraplex ignore_eos, baseline min_new_tokens)")
    g.add_argument("--warmup", type=int, default=1, help="sequential warm-up passes over all adapters per system (loads every adapter)")
    g = p.add_argument_group("verdict")
    g.add_argument("--slo-ms", type=float, default=None, help="p99 SLO in ms (none: --slo-factor x the baseline's p50 at the lowest rate)")
    g.add_argument("--slo-factor", type=float, default=4.0, help="SLO = this x the baseline p50 at the lowest rate")
    g.add_argument("--max-error-rate", type=float, default=0.01, help="errors + timeouts allowed at a sustainable rate (fraction)")
    g.add_argument("--min-achieved", type=float, default=0.9, help="achieved/offered needed to call a rate sustainable")
    g.add_argument("--stop-after-fails", type=int, default=2, help="stop offering a system higher rates after this many consecutive failing steps (0 = never)")
    g.add_argument("--keep-fixture", action="store_true", help="keep the temp dir with model and adapters")
    return p.parse_args(argv)


# ---- workload --------------------------------------------------------------------------------------------
def rate_ladder(a: argparse.Namespace) -> list[float]:
    if a.rates:
        return [float(x) for x in a.rates.split(",") if x.strip()]
    out, r = [], a.rate_min
    while r <= a.rate_max * (1 + 1e-9):
        out.append(round(r, 3))
        r *= a.rate_factor
    return out


def zipf_weights(n: int, s: float) -> list[float]:
    w = [1.0 / (k ** s) for k in range(1, n + 1)]
    total = sum(w)
    return [x / total for x in w]


def make_workload(a: argparse.Namespace, rate: float, step: int, names: list[str]) -> list[tuple[float, str, list[int]]]:
    """[(arrival offset s, adapter, prompt ids)]: Poisson arrivals at `rate`, Zipf adapters; seeded per step."""
    rng = random.Random(a.seed * 1_000_003 + step)
    duration = min(max(a.step_seconds, a.min_requests / rate), a.max_step_seconds)
    ranked = names[:]
    random.Random(a.seed).shuffle(ranked)  # which adapter is popular: fixed for the run
    weights = zipf_weights(len(ranked), a.zipf_s)
    out, t = [], 0.0
    while len(out) < a.max_requests:
        t += rng.expovariate(rate)
        if t > duration:
            break
        adapter = rng.choices(ranked, weights)[0]
        out.append((t, adapter, [rng.randrange(3, a.vocab) for _ in range(a.prompt_tokens)]))
    return out


# ---- HTTP load ---------------------------------------------------------------------------------------------
def request_for(system: str, base_url: str, adapter: str, prompt: list[int], max_tokens: int) -> tuple[str, dict, dict]:
    body = {"model": adapter, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    if system == "baseline":
        return f"{base_url}/baseline/v1/completions", body, {"serve_multiplexed_model_id": adapter}
    return f"{base_url}/{system}/v1/completions", body, {}


async def one_request(client, url: str, body: dict, headers: dict, timeout: float, t_sched: float) -> dict:
    try:
        r = await client.post(url, json=body, headers=headers, timeout=timeout)
        done = time.perf_counter()
        if r.status_code != 200:
            return {"ok": False, "kind": f"http_{r.status_code}", "lat": done - t_sched, "done": done}
        return {"ok": True, "lat": done - t_sched, "done": done, "tokens": r.json()["usage"]["completion_tokens"]}
    except Exception as e:  # httpx timeouts, connection errors, cancellation at the step deadline
        import httpx

        kind = "timeout" if isinstance(e, httpx.TimeoutException) else type(e).__name__
        return {"ok": False, "kind": kind, "lat": time.perf_counter() - t_sched, "done": time.perf_counter()}


async def run_step(client, a: argparse.Namespace, system: str, base_url: str, rate: float, work: list) -> dict:
    """Offer `work` open-loop: each request starts at its scheduled time whatever earlier ones are doing."""
    import numpy as np

    before = await fetch_stats(client, base_url, system)
    load0 = os.getloadavg()
    tasks, lags = [], []
    t0 = time.perf_counter() + 0.05
    for offset, adapter, prompt in work:
        t_sched = t0 + offset
        delay = t_sched - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(max(0.0, time.perf_counter() - t_sched))
        url, body, headers = request_for(system, base_url, adapter, prompt, a.max_tokens)
        tasks.append(asyncio.create_task(one_request(client, url, body, headers, a.timeout, t_sched)))
    window = work[-1][0] if work else 0.0
    done, pending = await asyncio.wait(tasks, timeout=a.timeout + 5) if tasks else (set(), set())
    for t in pending:  # bounded: nothing outlives its step
        t.cancel()
    results = [t.result() for t in tasks if t in done]
    results += [{"ok": False, "kind": "timeout", "lat": a.timeout, "done": time.perf_counter()} for _ in pending]
    after = await fetch_stats(client, base_url, system)
    ok = [r for r in results if r["ok"]]
    lat = np.array([r["lat"] for r in ok]) if ok else None

    def ms(q: float | None) -> float | None:  # None, not NaN, when nothing completed (strict JSON)
        if lat is None:
            return None
        return round(float(lat.mean() if q is None else (lat.max() if q == 100 else np.percentile(lat, q))) * 1000, 1)

    span = max(window, max((r["done"] for r in results), default=t0) - t0, 1e-9)
    errors: dict[str, int] = {}
    for r in results:
        if not r["ok"]:
            errors[r["kind"]] = errors.get(r["kind"], 0) + 1
    n = len(results)
    step = {
        "system": system, "offered_rps": rate, "sent": n, "window_s": round(window, 2), "span_s": round(span, 2),
        "offered_actual_rps": round(n / window, 3) if window else None,
        "completed": len(ok), "errors": sum(errors.values()), "error_kinds": errors, "error_rate": round(sum(errors.values()) / n, 4) if n else 0.0,
        "achieved_rps": round(len(ok) / span, 3), "tokens_per_s": round(sum(r["tokens"] for r in ok) / span, 1),
        "p50_ms": ms(50), "p90_ms": ms(90), "p99_ms": ms(99), "mean_ms": ms(None), "max_ms": ms(100),
        "client_lag_ms_max": round(max(lags, default=0.0) * 1000, 1), "loadavg_start": [round(x, 2) for x in load0],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
    step["server"] = server_delta(system, before, after)
    return step


def fmt(x: float | None) -> str:
    return f"{x:7.0f}" if x is not None else "    n/a"


async def fetch_stats(client, base_url: str, system: str) -> dict:
    try:
        r = await client.get(f"{base_url}/{system}/v1/stats", timeout=10)
        return r.json() if r.status_code == 200 else {}
    except Exception:
        return {}


def server_delta(system: str, before: dict, after: dict) -> dict:
    if system != "baseline":
        b, c = next(iter(before.values()), {}), next(iter(after.values()), {})
        keys = ("requests", "batches", "rows", "tokens", "busy_s", "device_misses", "evictions_device")
        d = {k: round(c.get(k, 0) - b.get(k, 0), 3) for k in keys if k in c}
        if d.get("batches"):
            d["mean_batch"] = round(d["rows"] / d["batches"], 2)
        return d
    keys = ("requests", "tokens", "loads", "unloads", "reloads", "busy_s", "errors")
    return {k: round(after.get(k, 0) - before.get(k, 0), 3) for k in keys if k in after}


async def warm_up(client, a: argparse.Namespace, base_url: str, names: list[str]) -> dict:
    """Sequential passes over every adapter (baseline loads them all) plus one concurrent burst per system."""
    out = {}
    for system in SYSTEMS:
        t = time.perf_counter()
        for _ in range(a.warmup):
            for n in names:
                url, body, headers = request_for(system, base_url, n, [3 + i for i in range(a.prompt_tokens)], a.max_tokens)
                r = await client.post(url, json=body, headers=headers, timeout=max(60, a.timeout))
                if r.status_code != 200:
                    raise RuntimeError(f"warm-up {system} {n}: HTTP {r.status_code} {r.text[:300]}")
        burst = [request_for(system, base_url, names[i % len(names)], [5] * a.prompt_tokens, a.max_tokens) for i in range(8)]
        rs = await asyncio.gather(*(client.post(u, json=b, headers=h, timeout=max(60, a.timeout)) for u, b, h in burst))
        if any(r.status_code != 200 for r in rs):
            raise RuntimeError(f"warm-up burst {system}: {[r.status_code for r in rs]}")
        out[system] = round(time.perf_counter() - t, 1)
    return out


async def consistency(client, a: argparse.Namespace, base_url: str, names: list[str], n: int = 16, rounds: int = 2) -> dict:
    """Same (adapter, prompt) pairs sequentially, then all at once: how many concurrent answers differ (greedy)."""
    rng = random.Random(a.seed + 7)
    pairs = [(names[i % len(names)], [rng.randrange(3, a.vocab) for _ in range(a.prompt_tokens)]) for i in range(n)]
    out = {}
    for system in SYSTEMS:
        async def text(i):
            url, body, headers = request_for(system, base_url, pairs[i][0], pairs[i][1], a.max_tokens)
            r = await client.post(url, json=body, headers=headers, timeout=max(60, a.timeout))
            return r.json()["choices"][0]["text"] if r.status_code == 200 else f"HTTP {r.status_code}"
        ref = [await text(i) for i in range(n)]
        bad = 0
        for _ in range(rounds):
            got = await asyncio.gather(*(text(i) for i in range(n)))
            bad += sum(g != r for g, r in zip(got, ref))
        out[system] = {"concurrent_mismatches": bad, "concurrent_requests": n * rounds, "distinct_reference_texts": len(set(ref))}
        print(f"consistency {system:16s}: {bad}/{n * rounds} concurrent answers differ from the sequential ones", flush=True)
    return out


# ---- verdict -----------------------------------------------------------------------------------------------
def passes(step: dict, slo_ms: float, a: argparse.Namespace) -> bool:
    return (step["completed"] > 0 and step["p99_ms"] is not None and step["p99_ms"] <= slo_ms and step["error_rate"] < a.max_error_rate
            and step["achieved_rps"] >= a.min_achieved * min(step["offered_rps"], step["offered_actual_rps"] or step["offered_rps"]))


def summarize(steps: list[dict], slo_ms: float, a: argparse.Namespace) -> dict:
    by = {s: [x for x in steps if x["system"] == s] for s in SYSTEMS}
    out: dict = {"slo_p99_ms": round(slo_ms, 1), "criteria": f"p99 <= {slo_ms:.0f} ms, errors < {a.max_error_rate:.0%}, achieved >= {a.min_achieved:.0%} of offered"}
    for s, xs in by.items():
        ok = [x for x in xs if x["sustainable"]]
        best = max(ok, key=lambda x: x["offered_rps"]) if ok else None
        top = max(x["offered_rps"] for x in xs) if xs else None
        out[s] = {
            "sustainable_rps": best["offered_rps"] if best else 0.0,
            "sustainable_achieved_rps": best["achieved_rps"] if best else 0.0,
            "sustainable_tokens_per_s": best["tokens_per_s"] if best else 0.0,
            "p50_ms_at_sustainable": best["p50_ms"] if best else None, "p99_ms_at_sustainable": best["p99_ms"] if best else None,
            "peak_achieved_rps": max((x["achieved_rps"] for x in xs), default=0.0),
            "peak_tokens_per_s": max((x["tokens_per_s"] for x in xs), default=0.0),
            "highest_rate_offered": top,
            "lower_bound_only": bool(best and top == best["offered_rps"]),  # never failed: the ladder ran out first
        }
    bl = out["baseline"]
    m = bl["sustainable_rps"]  # matched rate: the baseline's sustainable rate, every system measured there
    base_at_m = next((x for x in by["baseline"] if x["offered_rps"] == m), None)
    for s in SYSTEMS:
        if s == "baseline":
            continue
        lp = out[s]
        lp["sustainable_ratio"] = round(lp["sustainable_rps"] / bl["sustainable_rps"], 2) if bl["sustainable_rps"] else None
        lp["sustainable_tokens_ratio"] = round(lp["sustainable_tokens_per_s"] / bl["sustainable_tokens_per_s"], 2) if bl["sustainable_tokens_per_s"] else None
        lp["peak_achieved_ratio"] = round(lp["peak_achieved_rps"] / bl["peak_achieved_rps"], 2) if bl["peak_achieved_rps"] else None
        lp["target_3x_met"] = bool(lp["sustainable_ratio"] and lp["sustainable_ratio"] >= 3.0)
        at_m = next((x for x in by[s] if x["offered_rps"] == m), None)
        if m and at_m and base_at_m and at_m["p50_ms"]:
            lp["at_matched_rate"] = {"offered_rps": m, "p50_ms": at_m["p50_ms"], "p99_ms": at_m["p99_ms"], "achieved_rps": at_m["achieved_rps"],
                                     "baseline_p50_ms": base_at_m["p50_ms"], "baseline_p99_ms": base_at_m["p99_ms"], "baseline_achieved_rps": base_at_m["achieved_rps"],
                                     "p50_ratio_baseline_over_this": round(base_at_m["p50_ms"] / at_m["p50_ms"], 2),
                                     "p99_ratio_baseline_over_this": round(base_at_m["p99_ms"] / at_m["p99_ms"], 2)}
    out["sustainable_ratio"] = out["loraplex"]["sustainable_ratio"]  # the headline: loraplex as shipped
    out["target_3x_met"] = out["loraplex"]["target_3x_met"]
    return out


# ---- cluster ----------------------------------------------------------------------------------------------
def load_fixture_builder():
    spec = importlib.util.spec_from_file_location("bench_engine", ROOT / "scripts" / "bench_engine.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_fixture


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def loraplex_app(a: argparse.Namespace, base_dir: Path, ad_dir: Path, names: list[str]):
    from loraplex.deployments.app import build_app

    args = {
        "base_model": str(base_dir), "adapter_roots": [str(ad_dir)], "device": "cpu", "dtype": "float32",
        "max_rank": a.rank, "target_modules": a.targets.split(","), "ingress_num_cpus": a.ingress_cpus,
        "limits": {"max_tokens_limit": max(256, a.max_tokens), "default_max_tokens": min(64, max(256, a.max_tokens))},
        "groups": [{"name": "all", "adapters": names, "num_replicas": 1, "resources": {"num_cpus": a.replica_cpus},
                    "max_batch_size": a.max_batch_size, "batch_wait_timeout_s": a.batch_wait_s, "max_ongoing_requests": max(a.max_ongoing, a.max_batch_size),
                    "max_queued_requests": a.max_queued, "max_slots": len(names), "max_host_adapters": len(names)}],
    }
    if a.ingress_max_ongoing:
        args["ingress_max_ongoing_requests"] = a.ingress_max_ongoing
    return build_app(args), args


def wait_healthy(base_url: str, paths: list[str], deadline_s: float = 300) -> None:
    import httpx

    end = time.time() + deadline_s
    for path in paths:
        while True:
            try:
                if httpx.get(f"{base_url}{path}", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > end:
                raise RuntimeError(f"{base_url}{path} not healthy after {deadline_s:.0f} s")
            time.sleep(0.5)


async def sweep(a: argparse.Namespace, base_url: str, names: list[str], setup: dict) -> tuple[list[dict], float]:
    import httpx

    steps: list[dict] = []
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
        setup["warmup_s"] = await warm_up(client, a, base_url, names)
        setup["baseline_server"] = await fetch_stats(client, base_url, "baseline")
        setup["consistency"] = await consistency(client, a, base_url, names)
        slo_ms = a.slo_ms
        fails = {s: 0 for s in SYSTEMS}
        for i, rate in enumerate(rate_ladder(a)):
            work = make_workload(a, rate, i, names)
            k = SYSTEMS.index("baseline")
            order = SYSTEMS[k:] + SYSTEMS[:k]  # baseline first at the lowest rate: it defines the SLO
            order = order[i % len(order):] + order[:i % len(order)]  # then rotate, so no system always runs first
            for system in order:
                if a.stop_after_fails and fails[system] >= a.stop_after_fails:
                    continue
                st = await run_step(client, a, system, base_url, rate, work)
                if slo_ms is None:
                    if st["p50_ms"] is None:
                        raise RuntimeError(f"baseline completed no request at {rate} req/s: no SLO reference; pass --slo-ms")
                    slo_ms = a.slo_factor * st["p50_ms"]
                    setup["slo_source"] = f"{a.slo_factor:g} x baseline p50 at {rate:g} req/s ({st['p50_ms']:.0f} ms)"
                    print(f"SLO: p99 <= {slo_ms:.0f} ms ({setup['slo_source']})", flush=True)
                st["step"] = i
                st["sustainable"] = passes(st, slo_ms, a)
                fails[system] = 0 if st["sustainable"] else fails[system] + 1
                steps.append(st)
                mb = st["server"].get("mean_batch")
                print(f"[{i:2d}] {system:16s} offered {rate:6.2f} req/s -> achieved {st['achieved_rps']:6.2f} req/s {st['tokens_per_s']:7.1f} tok/s | "
                      f"p50 {fmt(st['p50_ms'])} ms p99 {fmt(st['p99_ms'])} ms | err {st['errors']:3d}/{st['sent']:<4d}"
                      f"{f' | batch {mb:5.1f}' if mb else ''} | load {st['loadavg_end'][0]:.2f} | {'OK' if st['sustainable'] else 'FAIL'}", flush=True)
                await asyncio.sleep(a.cooldown)
            if a.stop_after_fails and all(fails[s] >= a.stop_after_fails for s in SYSTEMS):
                break
    return steps, slo_ms if slo_ms is not None else float("nan")


def main(argv=None) -> int:
    a = parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    sys.path.insert(0, str(ROOT))
    if not port_free(a.port):
        print(f"port {a.port} on 127.0.0.1 is in use; pick another with --port", file=sys.stderr)
        return 2
    import ray
    import torch
    from ray import serve
    from transformers.utils import logging as hf_logging

    from loraplex.bench.baseline_multiplexed import build_baseline

    hf_logging.disable_progress_bar()
    t_start = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="bench_serving_"))
    fx = argparse.Namespace(seed=a.seed, vocab=a.vocab, hidden=a.hidden, layers=a.layers, rank=a.rank, targets=a.targets)
    base_dir, ad_dir = load_fixture_builder()(fx, tmp, a.adapters)
    names = [f"a{i}" for i in range(a.adapters)]
    base_url = f"http://127.0.0.1:{a.port}"
    setup = {
        "model": {"hidden": a.hidden, "layers": a.layers, "vocab": a.vocab, "intermediate": int(a.hidden * 2.75), "heads": max(1, a.hidden // 64), "random_init": True},
        "adapters": a.adapters, "rank": a.rank, "targets": a.targets, "prompt_tokens": a.prompt_tokens, "max_tokens": a.max_tokens,
        "greedy": True, "zipf_s": a.zipf_s, "zipf_top_share": round(zipf_weights(a.adapters, a.zipf_s)[0], 3), "seed": a.seed,
        "rates": rate_ladder(a), "step_seconds": a.step_seconds, "min_requests": a.min_requests, "max_step_seconds": a.max_step_seconds,
        "timeout_s": a.timeout, "ray_cpus": a.ray_cpus, "replica_cpus": a.replica_cpus, "num_replicas": 1,
        "systems": list(SYSTEMS), "loraplex": {"max_batch_size": a.max_batch_size, "batch_wait_timeout_s": a.batch_wait_s, "ingress_cpus": a.ingress_cpus,
                     "ingress_max_ongoing_requests": a.ingress_max_ongoing or "config default", "max_slots": a.adapters, "max_host_adapters": a.adapters},
        "baseline": {"max_num_models_per_replica": a.baseline_max_models or a.adapters, "one_request_at_a_time": True, "routing": "serve_multiplexed_model_id header"},
        "max_ongoing_requests": a.max_ongoing, "max_queued_requests": a.max_queued,
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "versions": {"torch": torch.__version__, "ray": ray.__version__, "python": sys.version.split()[0]},
    }
    steps, slo_ms = [], float("nan")
    try:
        ray.init(address="local", num_cpus=a.ray_cpus, include_dashboard=False, log_to_driver=False, object_store_memory=300 * 2**20,
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
        serve.start(http_options={"host": "127.0.0.1", "port": a.port})
        t = time.time()
        for system in SYSTEMS:
            if system != "baseline":
                lp_app, lp_args = loraplex_app(a, base_dir, ad_dir, names)
                setup["loraplex"]["app_args"] = lp_args
                serve.run(lp_app, name=system, route_prefix=f"/{system}")
        serve.run(build_baseline({"base_model": str(base_dir), "adapter_roots": [str(ad_dir)], "max_models": a.baseline_max_models or a.adapters,
                                  "num_cpus": a.replica_cpus, "max_ongoing_requests": a.max_ongoing, "max_queued_requests": a.max_queued}),
                  name="baseline", route_prefix="/baseline")
        wait_healthy(base_url, [f"/{s}/health" for s in SYSTEMS])
        setup["deploy_s"] = round(time.time() - t, 1)
        print(f"both apps up in {setup['deploy_s']} s on {base_url}; rates {setup['rates']}", flush=True)
        steps, slo_ms = asyncio.run(sweep(a, base_url, names, setup))
    finally:
        try:
            serve.shutdown()
        except Exception as e:  # noqa: BLE001 - best effort, keep shutting down
            print(f"serve.shutdown: {e}", file=sys.stderr)
        if ray.is_initialized():
            ray.shutdown()
        if not a.keep_fixture:
            shutil.rmtree(tmp, ignore_errors=True)
    setup["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    setup["wall_s"] = round(time.time() - t_start, 1)
    report = {"setup": setup, "steps": steps, "summary": summarize(steps, slo_ms, a)}
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2))
    plot(report, a.plot or a.json.with_suffix(".png"))
    print(json.dumps(report["summary"], indent=2))
    return 0


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"loraplex": "#2a7", "baseline": "#c44"}
    summ = report["summary"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for s in report["setup"]["systems"]:
        xs = [x for x in report["steps"] if x["system"] == s]
        if not xs:
            continue
        r = [x["offered_rps"] for x in xs]
        ax1.plot(r, [x["p99_ms"] for x in xs], marker="o", color=colors[s], label=f"{LABELS[s]} p99")
        ax1.plot(r, [x["p50_ms"] for x in xs], marker=".", ls="--", color=colors[s], label=f"{LABELS[s]} p50")
        ax2.plot(r, [x["achieved_rps"] for x in xs], marker="o", color=colors[s], label=LABELS[s])
        sus = summ.get(s, {}).get("sustainable_rps")
        if sus:
            ax2.axvline(sus, color=colors[s], ls=":", lw=1)
    slo = summ.get("slo_p99_ms")
    if slo and not math.isnan(slo):
        ax1.axhline(slo, color="#555", ls=":", label=f"SLO p99 {slo:.0f} ms")
    all_r = [x["offered_rps"] for x in report["steps"]] or [1]
    ax2.plot([min(all_r), max(all_r)], [min(all_r), max(all_r)], color="#999", ls="--", lw=1, label="achieved = offered")
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    rates = sorted(set(all_r))
    labelled = rates[::max(1, len(rates) // 9)]  # a fine ladder would overprint its labels
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered rate (req/s, Poisson)")
        ax.set_xticks(labelled, [f"{r:.3g}" for r in labelled])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax1.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax2.set_yticks(labelled, [f"{r:.3g}" for r in labelled])
    ax1.set_ylabel("latency (ms)")
    ax1.legend(fontsize=7)
    ax2.set_ylabel("achieved (completed req/s)")
    ax2.legend(fontsize=7)
    st = report["setup"]
    ratio = " / ".join(f"{s} {summ[s].get('sustainable_ratio')}x" for s in report["setup"]["systems"] if s != "baseline" and s in summ)
    fig.suptitle(f"{st['adapters']} adapters r{st['rank']}, Zipf s={st['zipf_s']}, hidden {st['model']['hidden']}x{st['model']['layers']}L, "
                 f"{st['max_tokens']} new tokens, 1 replica x {st['replica_cpus']} CPU each; sustainable vs baseline: {ratio}", fontsize=9)
    ax1.set_title("latency vs offered load")
    ax2.set_title("throughput: achieved vs offered (dotted: sustainable)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
