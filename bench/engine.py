"""In-process engine benchmark: loraplex's batched multi-LoRA engine vs PEFT vs the per-example adapter loop.

Everything runs side by side in one process on the same random weights and adapters (`bench.fixtures`),
with every adapter already resident, so the numbers compare compute, not loading. Configs are interleaved
over repeats and the median is reported, because a shared machine drifts: compare ratios, not seconds.
Not a test: nothing here asserts speed.

Configs (rows of `results`): base_only (plain HF generate), peft_single_adapter, peft_mixed_batch (PEFT's
`adapter_names=` per row), loraplex_base, loraplex_distinct (one adapter per row), loraplex_top2_blend (two
adapters per row at 0.5 each) and, unless skipped, seed_per_example_loop (the reference article's MoELoRA:
one example at a time through `set_adapter`).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from loraplex.bench.fixtures import FixtureSpec, adapter_names, build_fixture


@dataclass(frozen=True)
class EngineBenchSpec:
    fixture: FixtureSpec  # its seed also seeds the prompts
    adapters: int  # adapters in the main batch (distinct per row up to the batch size)
    batch: int
    prompt_tokens: int
    new_tokens: int
    threads: int  # torch intra-op threads, set for the whole process
    repeats: int  # timed runs per main config, after one warm-up
    sweep: tuple[int, ...]  # adapters-in-batch sweep; batch = max(batch, n)
    sweep_repeats: int
    sweep_configs: tuple[str, ...]  # configs measured in the sweep; base_only required (the ratios' denominator)
    skip_loop: bool  # skip the slow per-example loop
    dtype: str = "float32"  # every system's weights and compute


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_engine_bench(spec: EngineBenchSpec) -> dict:
    """Build the fixture in a temp dir, measure every config, return the report (setup, results, ratios, sweep)."""
    import torch
    from peft import PeftModel
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from loraplex.config.engine import EngineConfig
    from loraplex.experts.composition import Base, Blend, Single
    from loraplex.experts.engine import Engine, Request
    from loraplex.experts.sampling import SamplingParams

    torch.set_num_threads(spec.threads)
    hf_logging.disable_progress_bar()
    fx = spec.fixture
    n_adapters = max([spec.adapters, *spec.sweep])
    tmp = Path(tempfile.mkdtemp(prefix="bench_engine_"))
    base_dir, ad_dir = build_fixture(fx, tmp, n_adapters)
    names = adapter_names(n_adapters)

    dtype = getattr(torch, spec.dtype)
    plain = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype).eval()
    peft = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype), ad_dir / names[0], adapter_name=names[0]
    )
    for n in tqdm(names[1:], desc="PEFT load_adapter"):
        peft.load_adapter(ad_dir / n, adapter_name=n)
    peft.eval()
    engine = Engine.from_config(
        EngineConfig(
            base_model=str(base_dir),
            adapter_roots=[str(ad_dir)],
            max_slots=n_adapters,
            max_host_adapters=n_adapters,
            max_rank=fx.rank,
            target_modules=list(fx.targets),
            max_batch_rows=4 * max(spec.batch, *spec.sweep, 1),
            device="cpu",
            dtype=spec.dtype,
        )
    )
    engine.store.acquire(names)  # all adapters resident: measure compute, not loading

    g = torch.Generator().manual_seed(fx.seed)
    gen_kw = dict(max_new_tokens=spec.new_tokens, min_new_tokens=spec.new_tokens, do_sample=False)
    params = SamplingParams(max_tokens=spec.new_tokens, ignore_eos=True)

    def prompts(batch: int) -> torch.Tensor:
        return torch.randint(3, fx.vocab, (batch, spec.prompt_tokens), generator=g)

    def hf(model, ids, **kw):
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **gen_kw, **kw)

    def ours(ids, comps):
        return engine.generate([Request(row.tolist(), c, params) for row, c in zip(ids, comps)])

    def loop(ids, adapters):
        # The reference article's MoELoRA: one example at a time through its selected adapter.
        for row, n in zip(ids, adapters):
            peft.set_adapter(n)
            hf(peft, row[None])

    def configs(batch: int, n_distinct: int, with_loop: bool) -> dict:
        ids = prompts(batch)
        rows = [names[i % n_distinct] for i in range(batch)]
        cfgs = {
            "base_only": lambda: hf(plain, ids),
            "peft_single_adapter": lambda: (peft.set_adapter(names[0]), hf(peft, ids)),
            "peft_mixed_batch": lambda: hf(peft, ids, adapter_names=rows),
            "loraplex_base": lambda: ours(ids, [Base()] * batch),
            "loraplex_distinct": lambda: ours(ids, [Single(n) for n in rows]),
            "loraplex_top2_blend": lambda: ours(
                ids, [Blend(((n, 0.5), (names[(i + 1) % n_distinct], 0.5))) for i, n in enumerate(rows)]
            ),
        }
        if with_loop:
            cfgs["seed_per_example_loop"] = lambda: loop(ids, rows)
        return cfgs

    def measure(cfgs: dict, batch: int, desc: str, repeats: int) -> dict:
        times: dict[str, list[float]] = {k: [] for k in cfgs}
        for fn in cfgs.values():  # warm-up
            fn()
        for _ in tqdm(range(repeats), desc=desc):
            for k, fn in cfgs.items():  # interleaved: drift hits every config alike
                times[k].append(_timed(fn))
        out = {}
        base = statistics.median(times["base_only"])
        for k, ts in times.items():
            s = statistics.median(ts)
            out[k] = {
                "s": round(s, 4),
                "tok_per_s": round(batch * spec.new_tokens / s, 1),
                "vs_base": round(base / s, 3),
                "runs": [round(t, 4) for t in ts],
            }
        return out

    d = measure(
        configs(spec.batch, min(spec.adapters, spec.batch), not spec.skip_loop), spec.batch, "main", spec.repeats
    )
    sweep_out = []
    for n in spec.sweep:
        batch = max(spec.batch, n)
        cfgs = configs(batch, n, False)
        cfgs = {k: cfgs[k] for k in spec.sweep_configs}
        r = measure(cfgs, batch, f"sweep n={n}", spec.sweep_repeats)
        sweep_out.append(
            {
                "adapters_in_batch": n,
                "batch": batch,
                **{k: v["vs_base"] for k, v in r.items()},
                "tok_per_s": {k: v["tok_per_s"] for k, v in r.items()},
            }
        )

    return {
        "setup": {
            "hidden": fx.hidden,
            "layers": fx.layers,
            "vocab": fx.vocab,
            "adapters": spec.adapters,
            "rank": fx.rank,
            "targets": ",".join(fx.targets),
            "batch": spec.batch,
            "prompt_tokens": spec.prompt_tokens,
            "new_tokens": spec.new_tokens,
            "threads": spec.threads,
            "repeats": spec.repeats,
            "greedy": True,
            "torch": torch.__version__,
            "device": "cpu",
            "dtype": spec.dtype,
        },
        "results": d,
        "ratios": {
            "distinct_vs_base": d["loraplex_distinct"]["vs_base"],
            "distinct_vs_peft_mixed": round(d["peft_mixed_batch"]["s"] / d["loraplex_distinct"]["s"], 3),
            "top2_blend_vs_base": d["loraplex_top2_blend"]["vs_base"],
        },
        "sweep": sweep_out,
    }
