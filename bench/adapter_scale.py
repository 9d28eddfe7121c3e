"""Parts of the adapters-at-scale benchmark (`scripts/bench_adapters.py`): many PEFT adapters on disk quickly,
Zipf popularity with open-loop Poisson arrivals, the name-index benchmark, and the summary of what the
replicas report (tier hit rates, load times, decode-step times with and without loads, how the hottest
adapter's traffic split across replicas)."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import statistics
import time
from pathlib import Path

from loraplex.bench.fixtures import FixtureSpec, adapter_names, build_fixture

Arrival = tuple[float, str, list[int]]  # (offset s, adapter, prompt ids)
STATS_PUSH_S = 2.5


def build_many(spec: FixtureSpec, root: Path, n: int) -> tuple[Path, Path, list[str]]:
    """Base model plus `n` adapters. The first adapter is written by PEFT (`build_fixture`); the others reuse its
    adapter_config.json and tensor names with fresh N(0, 0.02) weights, so each is a real PEFT adapter on disk
    (PEFT's `from_pretrained` loads it) written in a fraction of PEFT's time. Reuses a finished build."""
    import torch
    from safetensors.torch import load_file, save_file
    from tqdm import tqdm

    names = adapter_names(n)
    done = root / ".complete.json"
    if done.is_file() and json.loads(done.read_text()) == {"n": n, "spec": repr(spec)}:
        return root / "base", root / "adapters", names
    shutil.rmtree(root, ignore_errors=True)
    base_dir, ad_dir = build_fixture(spec, root, 1)
    template = ad_dir / names[0]
    tensors = load_file(str(template / "adapter_model.safetensors"))
    gen = torch.Generator().manual_seed(spec.seed + 1)
    for name in tqdm(names[1:], desc="writing adapters", mininterval=2):
        out = ad_dir / name
        out.mkdir(parents=True)
        shutil.copy(template / "adapter_config.json", out / "adapter_config.json")
        fresh = {k: torch.randn(v.shape, generator=gen) * 0.02 for k, v in tensors.items()}
        save_file(fresh, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    done.write_text(json.dumps({"n": n, "spec": repr(spec)}))
    return base_dir, ad_dir, names


def zipf_weights(n: int, s: float) -> list[float]:
    w = [1.0 / (k**s) for k in range(1, n + 1)]
    total = sum(w)
    return [x / total for x in w]


def zipf_arrivals(
    names: list[str], s: float, rate: float, duration_s: float, prompt_tokens: int, vocab: int, seed: int
) -> list[Arrival]:
    """Open-loop Poisson arrivals at `rate`, each request's adapter drawn with Zipf(`s`) popularity over `names`
    (names[0] the most popular), random prompts."""
    rng = random.Random(seed)
    weights = zipf_weights(len(names), s)
    out: list[Arrival] = []
    t = rng.expovariate(rate)
    while t < duration_s:
        adapter = rng.choices(names, weights)[0]
        out.append((t, adapter, [rng.randrange(3, vocab) for _ in range(prompt_tokens)]))
        t += rng.expovariate(rate)
    return out


# ---- the name index --------------------------------------------------------------------------------------
def index_bench(root: Path, n_folders: int, lookups: int = 2000) -> dict:
    """`n_folders` adapter folders (configs only: discovery never reads weights); what one lookup costs with the
    index against the walk every request (or every TTL) paid before, and what a background scan costs."""
    from loraplex.experts.adapters.index import AdapterIndex
    from loraplex.experts.adapters.store import find_adapters

    shutil.rmtree(root, ignore_errors=True)
    for i in range(n_folders):
        d = root / f"tenant-{i // 100:03d}" / f"adapter-{i:05d}"
        d.mkdir(parents=True)
        (d / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 16}')
    t = time.perf_counter()
    walked = find_adapters([root])
    walk_s = time.perf_counter() - t
    t = time.perf_counter()
    index = AdapterIndex([root], scan_interval_s=None)
    build_s = time.perf_counter() - t
    probe = [f"tenant-{i // 100:03d}/adapter-{i:05d}" for i in random.Random(0).sample(range(n_folders), 100)]
    t = time.perf_counter()
    for i in range(lookups):
        assert probe[i % 100] in index
    lookup_s = (time.perf_counter() - t) / lookups
    t = time.perf_counter()
    index.refresh()
    scan_s = time.perf_counter() - t
    shutil.rmtree(root, ignore_errors=True)
    return {
        "folders": n_folders,
        "found": len(walked),
        "walk_per_call_ms": round(walk_s * 1000, 2),
        "index_build_ms": round(build_s * 1000, 2),
        "index_lookup_us": round(lookup_s * 1e6, 3),
        "background_scan_ms": round(scan_s * 1000, 2),
    }


# ---- what the replicas report --------------------------------------------------------------------------
def _delta(after: dict, before: dict, key: str) -> float:
    return after.get(key, 0) - before.get(key, 0)


def _compare(by: dict[str, dict[int, list[tuple[float, int]]]], a: str, b: str) -> dict[str, float | int | None]:
    """Median step ms of kind `a` against kind `b` at equal batch sizes, weighted by the steps seen at each size in
    both, so a batch-size difference does not pass for an effect."""
    num = den = 0.0
    ms_a, ms_b = [], []
    for rows in set(by.get(a, {})) & set(by.get(b, {})):
        pa = statistics.median(p for p, _ in by[a][rows])
        pb = statistics.median(p for p, _ in by[b][rows])
        w = min(sum(n for _, n in by[a][rows]), sum(n for _, n in by[b][rows]))
        num, den = num + w * pa / pb, den + w
        ms_a.append((pa * 1000, w))
        ms_b.append((pb * 1000, w))

    def mean(xs):
        return round(sum(x * w for x, w in xs) / sum(w for _, w in xs), 2) if xs else None

    return {f"{a}_ms": mean(ms_a), f"{b}_ms": mean(ms_b), "ratio": round(num / den, 3) if den else None,
            "steps_compared": int(den)}  # fmt: skip


def _steps(replicas: dict) -> dict[str, dict]:
    """Pure decode-step times: with a load in flight against steps where a request arrived without one (a
    cold request brings both), and against quiet steps."""
    by: dict[str, dict[int, list[tuple[float, int]]]] = {}
    for st in replicas.values():
        for key, v in (st.get("step_s") or {}).items():
            kind, rows = key.split(":")
            by.setdefault(kind, {}).setdefault(int(rows), []).append((v["p50"], v["n"]))
    return {
        "loading_vs_arrival": _compare(by, "loading", "arrival"),
        "loading_vs_idle": _compare(by, "loading", "idle"),
        "arrival_vs_idle": _compare(by, "arrival", "idle"),
    }


def summarize(before: dict, after: dict, hottest: str) -> dict:
    """One group's `/v1/stats` before and after a run: tier hit rates, load times, step times, the hottest
    adapter's requests per replica."""
    b, a = before.get("total", {}), after.get("total", {})
    dev_h, dev_m = _delta(a, b, "store_device_hits"), _delta(a, b, "store_device_misses")
    host_h, host_m = _delta(a, b, "store_host_hits"), _delta(a, b, "store_host_misses")
    replicas = after.get("replicas", {})
    loads = {
        stage: [r["load_times_s"][stage] for r in replicas.values() if r.get("load_times_s", {}).get(stage)]
        for stage in ("disk_to_host", "host_to_slot", "request_wait")
    }

    def worst(stage: str, q: str) -> float | None:
        xs = [x[q] for x in loads[stage] if x.get(q) is not None]
        return round(max(xs) * 1000, 2) if xs else None

    split = {}
    for rid, r in replicas.items():
        before_n = before.get("replicas", {}).get(rid, {}).get("requests_by_adapter", {}).get(hottest, 0)
        split[rid] = r.get("requests_by_adapter", {}).get(hottest, 0) - before_n
    return {
        "device_hit_rate": round(dev_h / (dev_h + dev_m), 4) if dev_h + dev_m else None,
        "host_hit_rate": round(host_h / (host_h + host_m), 4) if host_h + host_m else None,
        "device_misses": dev_m,
        "host_misses": host_m,
        "host_joins": _delta(a, b, "store_host_joins"),
        "load_failures": _delta(a, b, "store_load_failures"),
        "disk_to_host_ms": {"p50": worst("disk_to_host", "p50"), "p99": worst("disk_to_host", "p99")},
        "host_to_slot_ms": {"p50": worst("host_to_slot", "p50"), "p99": worst("host_to_slot", "p99")},
        "request_wait_for_load_ms": {"p50": worst("request_wait", "p50"), "p99": worst("request_wait", "p99")},
        "decode_step": _steps(replicas),
        "hottest": {"adapter": hottest, "requests_per_replica": split},
        "resident_device": {rid: len(r.get("resident", [])) for rid, r in replicas.items()},
        "resident_host": {rid: len(r.get("cached", [])) for rid, r in replicas.items()},
    }


# ---- one serving phase --------------------------------------------------------------------------------
def app_args(
    base_dir: Path,
    ad_dir: Path,
    pinned: list[str],
    replicas: int,
    slots: int,
    host: int,
    replica_cpus: float,
    threads: int,
    max_tokens: int,
    targets: tuple[str, ...],
    rank: int,
) -> dict:
    """One group over every adapter under the root: `replicas` replicas, `slots` device and `host` host slots each,
    `pinned` loaded on every replica at start."""
    return {
        "base_model": str(base_dir),
        "adapter_roots": [str(ad_dir)],
        "device": "cpu",
        "dtype": "float32",
        "max_rank": rank,
        "target_modules": list(targets),
        "ingress_num_cpus": 0.1,
        "adapter_scan_interval_s": 30.0,
        "limits": {"max_tokens_limit": max(64, max_tokens), "default_max_tokens": min(16, max_tokens)},
        "groups": [
            {
                "name": "all",
                "adapters": pinned,
                "num_replicas": replicas,
                "resources": {"num_cpus": replica_cpus},
                "max_batch_size": 32,
                "batch_wait_timeout_s": 0.0,
                "max_ongoing_requests": 64,
                "max_queued_requests": 512,
                "max_slots": slots,
                "max_host_adapters": host,
                "threads": threads,
            }
        ],
    }


async def run_phase(root: str, work: list[Arrival], max_tokens: int, timeout: float, hottest: str) -> dict:
    """Offer `work` open-loop; latency percentiles from the client, the rest from the replicas' stats."""
    import httpx

    from loraplex.bench.load import fetch_stats, run_step

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=512)) as client:
        await asyncio.sleep(STATS_PUSH_S)  # the replicas' stats reach the board about once a second
        before = (await fetch_stats(client, root)).get("all", {})
        rate = len(work) / work[-1][0] if work else 0.0
        step = await run_step(client, "loraplex", root, rate, work, max_tokens, timeout)
        await asyncio.sleep(STATS_PUSH_S)
        after = (await fetch_stats(client, root)).get("all", {})
    step.pop("server", None)
    return {"client": step, "replicas": summarize(before, after, hottest)}
