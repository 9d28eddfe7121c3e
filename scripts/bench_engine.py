#!/usr/bin/env python
"""Benchmark the batched multi-LoRA engine against PEFT and the reference article's per-example loop.

Everything runs side by side in one process on the same random Llama-shaped weights and the same
adapters, interleaved over repeats (this machine is noisy: compare ratios, not seconds). Writes JSON
and a PNG plot. Not a test: nothing here asserts speed.

    python scripts/bench_engine.py --json docs/bench_engine.json --plot docs/bench_engine.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True, help="where to write the results JSON")
    p.add_argument("--plot", type=Path, default=None, help="PNG plot path (default: JSON path with .png)")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--adapters", type=int, default=32, help="adapters loaded (and distinct per row in loraplex_distinct)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per config (median reported), after one warm-up")
    p.add_argument("--sweep", default="1,8,32,128", help="adapters-in-batch sweep ('' to skip); batch = max(--batch, n)")
    p.add_argument("--sweep-repeats", type=int, default=2, help="timed runs per config in the sweep")
    p.add_argument("--sweep-configs", default="base_only,peft_mixed_batch,loraplex_distinct,loraplex_top2_blend", help="configs measured in the sweep (base_only required)")
    p.add_argument("--skip-loop", action="store_true", help="skip the slow per-example loop baseline")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def build_fixture(a: argparse.Namespace, root: Path, n_adapters: int) -> tuple[Path, Path]:
    """A random Llama-shaped model, a word-level tokenizer and `n_adapters` PEFT adapters on disk."""
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(a.seed)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, a.vocab)}}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")), bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="left")
    heads = max(1, a.hidden // 64)
    cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=int(a.hidden * 2.75), num_hidden_layers=a.layers,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    base_dir, ad_dir = root / "base", root / "adapters"
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    peft = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=2 * a.rank, target_modules=a.targets.split(","), init_lora_weights=False))
    for i in tqdm(range(n_adapters), desc="writing adapters"):
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_" in name:
                    p.normal_(0, 0.02)
        peft.save_pretrained(ad_dir / f"a{i}")
    return base_dir, ad_dir


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    a = parse_args()
    torch.set_num_threads(a.threads)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from loraplex.config.engine import EngineConfig
    from loraplex.experts.composition import Base, Blend, Single
    from loraplex.experts.engine import Engine, Request
    from loraplex.experts.sampling import SamplingParams

    hf_logging.disable_progress_bar()
    sweep = [int(x) for x in a.sweep.split(",") if x]
    n_adapters = max([a.adapters, *sweep])
    tmp = Path(tempfile.mkdtemp(prefix="bench_engine_"))
    base_dir, ad_dir = build_fixture(a, tmp, n_adapters)
    names = [f"a{i}" for i in range(n_adapters)]

    plain = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), ad_dir / names[0], adapter_name=names[0])
    for n in tqdm(names[1:], desc="PEFT load_adapter"):
        peft.load_adapter(ad_dir / n, adapter_name=n)
    peft.eval()
    engine = Engine.from_config(EngineConfig(base_model=str(base_dir), adapter_roots=[str(ad_dir)], max_slots=n_adapters, max_host_adapters=n_adapters,
                                             max_rank=a.rank, target_modules=a.targets.split(","), max_batch_rows=4 * max(a.batch, *sweep, 1), device="cpu", dtype="float32"))
    engine.store.acquire(names)  # all adapters resident: measure compute, not loading

    g = torch.Generator().manual_seed(a.seed)
    gen_kw = dict(max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False)
    params = SamplingParams(max_tokens=a.new_tokens, ignore_eos=True)

    def prompts(batch: int) -> torch.Tensor:
        return torch.randint(3, a.vocab, (batch, a.prompt_tokens), generator=g)

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
            "loraplex_top2_blend": lambda: ours(ids, [Blend(((n, 0.5), (names[(i + 1) % n_distinct], 0.5))) for i, n in enumerate(rows)]),
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
                times[k].append(timed(fn))
        out = {}
        base = statistics.median(times["base_only"])
        for k, ts in times.items():
            s = statistics.median(ts)
            out[k] = {"s": round(s, 4), "tok_per_s": round(batch * a.new_tokens / s, 1), "vs_base": round(base / s, 3), "runs": [round(t, 4) for t in ts]}
        return out

    results = measure(configs(a.batch, min(a.adapters, a.batch), not a.skip_loop), a.batch, "main", a.repeats)
    sweep_out = []
    for n in sweep:
        batch = max(a.batch, n)
        cfgs = configs(batch, n, False)
        cfgs = {k: cfgs[k] for k in a.sweep_configs.split(",")}
        r = measure(cfgs, batch, f"sweep n={n}", a.sweep_repeats)
        sweep_out.append({"adapters_in_batch": n, "batch": batch, **{k: v["vs_base"] for k, v in r.items()}, "tok_per_s": {k: v["tok_per_s"] for k, v in r.items()}})

    d = results
    report = {
        "setup": {"hidden": a.hidden, "layers": a.layers, "vocab": a.vocab, "adapters": a.adapters, "rank": a.rank, "targets": a.targets, "batch": a.batch,
                  "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens, "threads": a.threads, "repeats": a.repeats, "greedy": True,
                  "torch": torch.__version__, "device": "cpu"},
        "results": d,
        "ratios": {"distinct_vs_base": d["loraplex_distinct"]["vs_base"],
                   "distinct_vs_peft_mixed": round(d["peft_mixed_batch"]["s"] / d["loraplex_distinct"]["s"], 3),
                   "top2_blend_vs_base": d["loraplex_top2_blend"]["vs_base"]},
        "sweep": sweep_out,
    }
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2))
    plot(report, a.plot or a.json.with_suffix(".png"))
    print(json.dumps({"results": {k: v["vs_base"] for k, v in d.items()}, "ratios": report["ratios"]}, indent=2))
    return 0


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    res = report["results"]
    names = list(res)
    ax1.barh(names, [res[n]["tok_per_s"] for n in names], color=["#888" if not n.startswith("loraplex") else "#2a7" for n in names])
    for i, n in enumerate(names):
        ax1.text(res[n]["tok_per_s"], i, f" {res[n]['vs_base']:.2f}x", va="center")
    s = report["setup"]
    ax1.set_xlabel("generated tokens / s (higher is better)")
    ax1.set_title(f"batch {s['batch']}, {s['adapters']} adapters r{s['rank']}, hidden {s['hidden']}x{s['layers']}L, {s['threads']} threads")
    if report["sweep"]:
        xs = [r["adapters_in_batch"] for r in report["sweep"]]
        for k in ("peft_mixed_batch", "loraplex_distinct", "loraplex_top2_blend"):
            if k in report["sweep"][0]:
                ax2.plot(xs, [r[k] for r in report["sweep"]], marker="o", label=k)
        ax2.axhline(1.0, color="#888", ls="--", label="base_only")
        ax2.set_xscale("log", base=2)
        ax2.set_xlabel("distinct adapters in batch (batch = max(32, n))")
        ax2.set_ylabel("throughput vs base_only")
        ax2.legend()
        ax2.set_title("adapters-in-batch sweep")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
