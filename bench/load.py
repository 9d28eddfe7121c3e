"""Open-loop HTTP load against the benchmarked systems: warm-up, consistency check, one rate step, the rate ladder.

Open loop: each request is sent at its scheduled arrival time whatever earlier requests are doing, and its
latency counts from that scheduled time, so a slow server cannot slow the client down and hide its own
queueing (no coordinated omission). Every step is bounded: requests still pending `timeout + 5` s after the
last arrival are cancelled and counted as timeouts. Only the given base URL (127.0.0.1) is contacted.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from loraplex.bench.systems import SYSTEMS, request_for
from loraplex.bench.verdict import Criteria
from loraplex.bench.vllm_bench import SUPPORTED as VLLM_BENCH_SYSTEMS
from loraplex.bench.vllm_bench import run_vllm_bench
from loraplex.bench.workloads import Arrival, WorkloadSpec, consistency_pairs, make_workload


@dataclass(frozen=True)
class LadderSpec:
    """The sweep: offered rates, how each step's load is drawn, what every request asks, and the verdict inputs."""

    rates: list[float]
    workload: WorkloadSpec
    max_tokens: int  # tokens generated per request
    timeout: float  # per-request timeout (s); a timed-out request is an error
    cooldown: float  # idle seconds between steps
    warmup_passes: int  # sequential passes over every adapter before measuring
    slo_ms: float | None  # p99 SLO; None: slo_factor x the baseline's p50 at the first rate
    slo_factor: float
    max_error_rate: float
    min_achieved: float
    stop_after_fails: int  # drop a system after this many consecutive failing steps (0 = never)
    systems: tuple[str, ...] = SYSTEMS
    reference: str = "baseline"  # runs first at step 0; its p50 there sets the SLO unless slo_ms is given
    stream: bool = False  # streamed requests (TTFT and TPOT) for every system that streams
    client: str = "ours"  # "vllm-bench": vLLM's `bench serve` drives the systems it can (bench.vllm_bench)
    tokenizer: str | None = None  # the bench model's folder (vllm-bench tokenizes its random prompts with it)


def latency_ms(latencies_s: list[float]) -> dict[str, float | None]:
    """p50/p90/p99/mean/max in ms, rounded to 0.1; all None (not NaN: strict JSON) when nothing completed."""
    import numpy as np

    keys = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "max_ms")
    if not latencies_s:
        return dict.fromkeys(keys)
    lat = np.array(latencies_s)
    vals = (np.percentile(lat, 50), np.percentile(lat, 90), np.percentile(lat, 99), lat.mean(), lat.max())
    return {k: round(float(v) * 1000, 1) for k, v in zip(keys, vals)}


def _percentiles_ms(values_s: list[float], prefix: str) -> dict[str, float | None]:
    """p50/p99 of `values_s` as `<prefix>_p50_ms`/`<prefix>_p99_ms` (TTFT, TPOT), the way `latency_ms` rounds."""
    lat = latency_ms(values_s)
    return {f"{prefix}_p50_ms": lat["p50_ms"], f"{prefix}_p99_ms": lat["p99_ms"]}


def step_stats(results: list[dict], rate: float, window: float, t0: float) -> dict:
    """The load-side record of one step from its per-request results ({ok, lat, done[, tokens | kind]}).

    Rates divide by the span from the step start to the last completion (at least the arrival window), so
    a backlog that drains after the last arrival lowers achieved throughput instead of being ignored.
    """
    ok = [r for r in results if r["ok"]]
    span = max(window, max((r["done"] for r in results), default=t0) - t0, 1e-9)
    errors: dict[str, int] = {}
    for r in results:
        if not r["ok"]:
            errors[r["kind"]] = errors.get(r["kind"], 0) + 1
    n = len(results)
    return {
        "offered_rps": rate,
        "sent": n,
        "window_s": round(window, 2),
        "span_s": round(span, 2),
        "offered_actual_rps": round(n / window, 3) if window else None,
        "completed": len(ok),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "error_rate": round(sum(errors.values()) / n, 4) if n else 0.0,
        "achieved_rps": round(len(ok) / span, 3),
        "tokens_per_s": round(sum(r["tokens"] for r in ok) / span, 1),
        **latency_ms([r["lat"] for r in ok]),
        **_percentiles_ms([r["ttft"] for r in ok if r.get("ttft") is not None], "ttft"),
        **_percentiles_ms([r["tpot"] for r in ok if r.get("tpot") is not None], "tpot"),
    }


def server_delta(system: str, before: dict, after: dict) -> dict:
    """Server-side counters over one step (the /v1/stats difference); loraplex adds the mean running batch.
    vLLM's own server has no /v1/stats: {}."""
    if system != "baseline":
        b, c = next(iter(before.values()), {}), next(iter(after.values()), {})
        b, c = b.get("total", b), c.get("total", c)  # loraplex: a group's replicas summed
        keys = ("requests", "batches", "rows", "tokens", "busy_s", "device_misses", "evictions_device")
        d = {k: round(c.get(k, 0) - b.get(k, 0), 3) for k in keys if k in c}
        if d.get("batches"):
            d["mean_batch"] = round(d["rows"] / d["batches"], 2)
        return d
    keys = ("requests", "tokens", "loads", "unloads", "reloads", "busy_s", "errors")
    return {k: round(after.get(k, 0) - before.get(k, 0), 3) for k in keys if k in after}


async def fetch_stats(client, root: str) -> dict:
    """GET <root>/v1/stats; {} when it fails (the stats are informative, never a reason to abort)."""
    try:
        r = await client.get(f"{root}/v1/stats", timeout=10)
        return r.json() if r.status_code == 200 else {}
    except Exception:
        return {}


async def _streamed(client, url: str, body: dict, headers: dict, timeout: float, t_sched: float) -> dict:
    """One SSE completion: TTFT at the first chunk carrying text, TPOT over the tokens after it."""
    import json

    first = None
    tokens = 0
    async with client.stream("POST", url, json=body, headers=headers, timeout=timeout) as r:
        if r.status_code != 200:
            await r.aread()
            done = time.perf_counter()
            return {"ok": False, "kind": f"http_{r.status_code}", "lat": done - t_sched, "done": done}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and any(c.get("text") for c in chunk.get("choices", [])):
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    done = time.perf_counter()
    ttft = (first or done) - t_sched
    tpot = (done - (first or done)) / (tokens - 1) if tokens > 1 else None
    return {"ok": True, "lat": done - t_sched, "done": done, "tokens": tokens, "ttft": ttft, "tpot": tpot}


async def one_request(client, url: str, body: dict, headers: dict, timeout: float, t_sched: float) -> dict:
    try:
        if body.get("stream"):
            return await _streamed(client, url, body, headers, timeout, t_sched)
        r = await client.post(url, json=body, headers=headers, timeout=timeout)
        done = time.perf_counter()
        if r.status_code != 200:
            return {"ok": False, "kind": f"http_{r.status_code}", "lat": done - t_sched, "done": done}
        return {"ok": True, "lat": done - t_sched, "done": done, "tokens": r.json()["usage"]["completion_tokens"]}
    except Exception as e:  # httpx timeouts, connection errors, cancellation at the step deadline
        import httpx

        kind = "timeout" if isinstance(e, httpx.TimeoutException) else type(e).__name__
        return {"ok": False, "kind": kind, "lat": time.perf_counter() - t_sched, "done": time.perf_counter()}


async def run_step(
    client,
    system: str,
    root: str,
    rate: float,
    work: list[Arrival],
    max_tokens: int,
    timeout: float,
    stream: bool = False,
    names: list[str] | None = None,
) -> dict:
    """Offer `work` open-loop to `system` (at `root`): each request starts at its scheduled time whatever earlier
    ones are doing."""
    before = await fetch_stats(client, root)
    load0 = os.getloadavg()
    tasks, lags = [], []
    t0 = time.perf_counter() + 0.05
    for offset, adapter, prompt in work:
        t_sched = t0 + offset
        delay = t_sched - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(max(0.0, time.perf_counter() - t_sched))
        url, body, headers = request_for(system, root, adapter, prompt, max_tokens, stream, names)
        tasks.append(asyncio.create_task(one_request(client, url, body, headers, timeout, t_sched)))
    window = work[-1][0] if work else 0.0
    done, pending = await asyncio.wait(tasks, timeout=timeout + 5) if tasks else (set(), set())
    for t in pending:  # bounded: nothing outlives its step
        t.cancel()
    results = [t.result() for t in tasks if t in done]
    results += [{"ok": False, "kind": "timeout", "lat": timeout, "done": time.perf_counter()} for _ in pending]
    after = await fetch_stats(client, root)
    step = {"system": system, **step_stats(results, rate, window, t0)}
    step["client_lag_ms_max"] = round(max(lags, default=0.0) * 1000, 1)
    step["loadavg_start"] = [round(x, 2) for x in load0]
    step["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    step["server"] = server_delta(system, before, after)
    return step


async def warm_up(
    client,
    urls: dict[str, str],
    names: list[str],
    passes: int,
    prompt_tokens: int,
    max_tokens: int,
    timeout: float,
) -> dict:
    """Sequential passes over every adapter (the baseline loads them all) plus one concurrent burst per system.

    Returns seconds per system. Raises on any non-200: a system that cannot answer is not worth measuring.
    """
    out = {}
    for system, root in urls.items():
        t = time.perf_counter()
        for _ in range(passes):
            for n in names:
                prompt = [3 + i for i in range(prompt_tokens)]
                url, body, headers = request_for(system, root, n, prompt, max_tokens, names=names)
                r = await client.post(url, json=body, headers=headers, timeout=max(60, timeout))
                if r.status_code != 200:
                    raise RuntimeError(f"warm-up {system} {n}: HTTP {r.status_code} {r.text[:300]}")
        burst = [
            request_for(system, root, names[i % len(names)], [5] * prompt_tokens, max_tokens, names=names)
            for i in range(8)
        ]
        rs = await asyncio.gather(*(client.post(u, json=b, headers=h, timeout=max(60, timeout)) for u, b, h in burst))
        if any(r.status_code != 200 for r in rs):
            raise RuntimeError(f"warm-up burst {system}: {[r.status_code for r in rs]}")
        out[system] = round(time.perf_counter() - t, 1)
    return out


async def consistency(
    client,
    urls: dict[str, str],
    pairs: list[tuple[str, list[int]]],
    max_tokens: int,
    timeout: float,
    rounds: int = 2,
    names: list[str] | None = None,
) -> dict:
    """The pairs sequentially, then all at once `rounds` times: how many concurrent (greedy) answers differ.
    Also, across systems that serve the same requests, which sequential answers differ from the first's."""
    n = len(pairs)
    out = {}
    refs: dict[str, list[str]] = {}
    for system, root in urls.items():

        async def text(i, system=system, root=root):
            url, body, headers = request_for(system, root, pairs[i][0], pairs[i][1], max_tokens, names=names)
            r = await client.post(url, json=body, headers=headers, timeout=max(60, timeout))
            return r.json()["choices"][0]["text"] if r.status_code == 200 else f"HTTP {r.status_code}"

        ref = [await text(i) for i in range(n)]
        refs[system] = ref
        bad = 0
        for _ in range(rounds):
            got = await asyncio.gather(*(text(i) for i in range(n)))
            bad += sum(g != r for g, r in zip(got, ref))
        out[system] = {
            "concurrent_mismatches": bad,
            "concurrent_requests": n * rounds,
            "distinct_reference_texts": len(set(ref)),
        }
        print(
            f"consistency {system:16s}: {bad}/{n * rounds} concurrent answers differ from the sequential ones",
            flush=True,
        )
    single = [s for s in refs if s != "loraplex-vllm-mix"]  # the mix sends other requests
    for s in single[1:]:
        out[s]["sequential_differs_from_" + single[0]] = sum(a != b for a, b in zip(refs[s], refs[single[0]]))
    return out


def step_order(i: int, systems: tuple[str, ...] = SYSTEMS, first: str = "baseline") -> tuple[str, ...]:
    """Systems in the order step `i` runs them: `first` at step 0 (it defines the SLO), then rotating."""
    k = systems.index(first)
    order = systems[k:] + systems[:k]
    return order[i % len(order) :] + order[: i % len(order)]


def _fmt(x: float | None) -> str:
    return f"{x:7.0f}" if x is not None else "    n/a"


def _progress_line(i: int, system: str, rate: float, st: dict) -> str:
    mb = st["server"].get("mean_batch")
    tpot = f" tpot {st['tpot_p50_ms']:.0f} ms" if st.get("tpot_p50_ms") is not None else ""
    return (
        f"[{i:2d}] {system:17s}{tpot} offered {rate:6.2f} req/s -> achieved {st['achieved_rps']:6.2f} req/s "
        f"{st['tokens_per_s']:7.1f} tok/s | p50 {_fmt(st['p50_ms'])} ms p99 {_fmt(st['p99_ms'])} ms | "
        f"err {st['errors']:3d}/{st['sent']:<4d}{f' | batch {mb:5.1f}' if mb else ''} | "
        f"load {st['loadavg_end'][0]:.2f} | {'OK' if st['sustainable'] else 'FAIL'}"
    )


async def vllm_bench_step(client, spec: LadderSpec, system: str, url: str, rate: float, **kw) -> dict:
    """One `vllm bench serve` run against `system` as a step record, with the machine load around it and the
    server's counters over it (the ladder's steps and the closed-loop runs alike)."""
    before, load0 = await fetch_stats(client, url), os.getloadavg()
    st = await asyncio.to_thread(
        run_vllm_bench,
        system,
        url,
        rate,
        tokenizer=spec.tokenizer,
        prompt_tokens=spec.workload.prompt_tokens,
        max_tokens=spec.max_tokens,
        stream=spec.stream,
        **kw,
    )
    st["loadavg_start"] = [round(x, 2) for x in load0]
    st["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    st["server"] = server_delta(system, before, await fetch_stats(client, url))
    return st


async def sweep(
    spec: LadderSpec, urls: dict[str, str], names: list[str], setup: dict
) -> tuple[list[dict], Criteria | None]:
    """Warm up, check consistency, then run every rate of the ladder on every system; (steps, criteria used).

    Every system gets the identical request sequence at a rate, back to back, so machine noise hits all
    of them. Fills `setup` with warmup_s, baseline_server, consistency and (when derived) slo_source.
    The criteria are None only when no step ran and no SLO was given.
    """
    import httpx

    steps: list[dict] = []
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
        setup["warmup_s"] = await warm_up(
            client, urls, names, spec.warmup_passes, spec.workload.prompt_tokens, spec.max_tokens, spec.timeout
        )
        if "baseline" in urls:
            setup["baseline_server"] = await fetch_stats(client, urls["baseline"])
        setup["consistency"] = await consistency(
            client, urls, consistency_pairs(spec.workload, names), spec.max_tokens, spec.timeout, names=names
        )
        criteria = None if spec.slo_ms is None else Criteria(spec.slo_ms, spec.max_error_rate, spec.min_achieved)
        fails = dict.fromkeys(spec.systems, 0)
        for i, rate in enumerate(spec.rates):
            work = make_workload(spec.workload, rate, i, names)
            for system in step_order(i, spec.systems, spec.reference):
                if spec.stop_after_fails and fails[system] >= spec.stop_after_fails:
                    continue
                if spec.client == "vllm-bench" and system in VLLM_BENCH_SYSTEMS:
                    st = await vllm_bench_step(
                        client,
                        spec,
                        system,
                        urls[system],
                        rate,
                        timeout_s=spec.timeout + 3 * len(work) / rate + 120,
                        names=names,
                        num_prompts=len(work),
                        seed=spec.workload.seed + i,
                    )
                else:
                    st = await run_step(
                        client, system, urls[system], rate, work, spec.max_tokens, spec.timeout, spec.stream, names
                    )
                if criteria is None:
                    if st["p50_ms"] is None:
                        raise RuntimeError(
                            f"{system} completed no request at {rate} req/s: no SLO reference; pass --slo-ms"
                        )
                    criteria = Criteria(spec.slo_factor * st["p50_ms"], spec.max_error_rate, spec.min_achieved)
                    setup["slo_source"] = (
                        f"{spec.slo_factor:g} x {system} p50 at {rate:g} req/s ({st['p50_ms']:.0f} ms)"
                    )
                    print(f"SLO: p99 <= {criteria.slo_ms:.0f} ms ({setup['slo_source']})", flush=True)
                st["step"] = i
                st["sustainable"] = criteria.passes(st)
                fails[system] = 0 if st["sustainable"] else fails[system] + 1
                steps.append(st)
                print(_progress_line(i, system, rate, st), flush=True)
                await asyncio.sleep(spec.cooldown)
            if spec.stop_after_fails and all(fails[s] >= spec.stop_after_fails for s in spec.systems):
                break
    return steps, criteria


CLOSED_KINDS = ("base", "distinct")


def parse_closed_loop(text: str) -> list[tuple[str, int]]:
    """`base:32,distinct:32` -> [("base", 32), ("distinct", 32)]: what runs with that many requests in flight."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, n = part.partition(":")
        if kind not in CLOSED_KINDS or not n.isdigit() or int(n) < 1:
            raise ValueError(f"closed-loop shape {part!r}: expected KIND:CONCURRENCY with KIND in {list(CLOSED_KINDS)}")
        out.append((kind, int(n)))
    return out


async def closed_loop(
    spec: LadderSpec, urls: dict[str, str], names: list[str], shapes: list[tuple[str, int]], prompts_per_slot: int
) -> list[dict]:
    """vLLM's client with a fixed number of requests in flight (`--max-concurrency`, no arrival rate): `base`
    sends every request to the base model, `distinct` a uniformly random adapter of `names` per request.
    The throughput a system reaches when it is never idle; systems run back to back per shape."""
    import httpx

    out = []
    async with httpx.AsyncClient(trust_env=False) as client:
        for k, (kind, n) in enumerate(shapes):
            for system in step_order(k, spec.systems, spec.reference):
                if system not in VLLM_BENCH_SYSTEMS:
                    continue
                st = await vllm_bench_step(
                    client,
                    spec,
                    system,
                    urls[system],
                    float("inf"),
                    timeout_s=spec.timeout * prompts_per_slot + 300,
                    names=names if kind == "distinct" else [],
                    num_prompts=n * prompts_per_slot,
                    seed=spec.workload.seed + 1000 + k,
                    max_concurrency=n,
                )
                st.update(shape=kind, concurrency=n, offered_rps=None)
                out.append(st)
                print(
                    f"closed {kind}:{n} {system:17s} {st['achieved_rps']:6.2f} req/s, TPOT p50 "
                    f"{st['tpot_p50_ms']} ms, e2e p99 {st['p99_ms']} ms, errors {st['errors']}",
                    flush=True,
                )
                await asyncio.sleep(spec.cooldown)
    return out
