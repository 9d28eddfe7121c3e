"""The engine benchmark on a model built in device memory: the GPU check's Llama-3-8B shape, nothing on disk.

`bench.engine` writes a fixture to disk and loads it the way a replica does; an 8B model with 64 adapters
would be ~17 GB of files, so this variant builds the random model on the device, gives PEFT and our
engine the *same* random adapters (PEFT's tensors are copied into our slots), and drives our `Decoder`
directly (no store, no scheduler: they are host-side bookkeeping). Configs: base_only (HF generate),
peft_mixed_batch (`adapter_names=` per row), loraplex_base, loraplex_distinct, loraplex_top2_blend, each
eager and, with `compile`, with our forward's compiled MLP blocks. A greedy cross-check compares our
distinct-adapter tokens with PEFT's on a few rows (bf16 may legitimately diverge late; it is reported,
not asserted). Needs only torch, transformers and PEFT.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceBenchSpec:
    hidden: int = 4096
    layers: int = 32
    heads: int = 32
    kv_heads: int = 8
    intermediate: int = 14336
    vocab: int = 128256
    adapters: int = 64
    rank: int = 16
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    batch: int = 64
    prompt_tokens: int = 128
    new_tokens: int = 64
    device: str = "cuda"
    dtype: str = "bfloat16"
    repeats: int = 3
    compile: bool = True
    seed: int = 0


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run_device_bench(spec: DeviceBenchSpec, progress=print) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, models
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from loraplex.bench.fixtures import llama_config
    from loraplex.experts.choices import GenItem
    from loraplex.experts.decoder import Decoder
    from loraplex.experts.lora.layers import wrap_model
    from loraplex.experts.sampling import SamplingParams

    device, dtype = torch.device(spec.device), getattr(torch, spec.dtype)
    torch.manual_seed(spec.seed)
    t0 = time.perf_counter()
    positions = max(1024, 2 * (spec.prompt_tokens + spec.new_tokens))
    cfg = llama_config(spec.vocab, spec.hidden, spec.intermediate, spec.layers, spec.heads, spec.kv_heads, positions)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, spec.vocab)}}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")), eos_token="</s>", pad_token="<pad>"
    )
    names = [f"a{i}" for i in range(spec.adapters)]
    lora = LoraConfig(r=spec.rank, lora_alpha=2 * spec.rank, target_modules=list(spec.targets), init_lora_weights=False)
    peft = get_peft_model(model, lora, adapter_name=names[0])
    for n in names[1:]:
        peft.add_adapter(n, lora)
    peft.to(device=device, dtype=dtype).eval()
    progress(f"built {spec.hidden}x{spec.layers}L model + {spec.adapters} adapters in {time.perf_counter() - t0:.0f} s")

    # our engine: a second copy of the base weights (PEFT wrapped the first), the same adapter tensors
    with torch.device(device):
        ours = LlamaForCausalLM(cfg).to(dtype).eval()
    base_state = {
        k.replace(".base_layer", ""): v for k, v in peft.get_base_model().state_dict().items() if "lora_" not in k
    }
    ours.load_state_dict(base_state, strict=True)
    wrapped = wrap_model(ours, spec.adapters, spec.rank, spec.targets)
    for slot, n in enumerate(names):
        modules = {}
        for mod_name in wrapped.layers:
            layer = peft.get_base_model().get_submodule(mod_name)
            A, B = layer.lora_A[n].weight, layer.lora_B[n].weight
            modules[mod_name] = (A, B, layer.scaling[n])
        wrapped.write_slot(slot, modules)
    rows = 4 * spec.batch

    g = torch.Generator().manual_seed(spec.seed)
    ids = torch.randint(3, spec.vocab, (spec.batch, spec.prompt_tokens), generator=g)
    params = SamplingParams(max_tokens=spec.new_tokens, ignore_eos=True)
    row_adapters = [i % spec.adapters for i in range(spec.batch)]

    def hf(m, **kw):
        x = ids.to(device)
        with torch.inference_mode():
            return m.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=spec.new_tokens,
                min_new_tokens=spec.new_tokens,
                do_sample=False,
                **kw,
            )

    def decode(decoder: Decoder, slot_rows: list[list[dict[int, float]]]) -> list[list[int]]:
        items = [GenItem(r.tolist(), s, [1.0], params) for r, s in zip(ids, slot_rows)]  # one virtual row each
        out: dict[int, list[int]] = {}
        pending = list(items)
        while pending or len(decoder):
            for item, outs in decoder.step(pending):
                out[id(item)] = outs[0].token_ids
            pending = []
        _sync(device)
        return [out[id(it)] for it in items]

    base_rows = [[{}] for _ in range(spec.batch)]
    distinct_rows = [[{s: 1.0}] for s in row_adapters]
    blend_rows = [[{s: 0.5, (s + 1) % spec.adapters: 0.5}] for s in row_adapters]
    decoders = {"eager": Decoder(wrapped, tok, {2}, rows, 2048)}
    if spec.compile:
        decoders["compiled"] = Decoder(wrapped, tok, {2}, rows, 2048, compile=True)
    cfgs = {
        "base_only": lambda: (peft.disable_adapter_layers(), hf(peft), peft.enable_adapter_layers()),
        "peft_mixed_batch": lambda: hf(peft, adapter_names=[names[s] for s in row_adapters]),
    }
    for mode, dec in decoders.items():
        cfgs[f"loraplex_base_{mode}"] = lambda d=dec: decode(d, base_rows)
        cfgs[f"loraplex_distinct_{mode}"] = lambda d=dec: decode(d, distinct_rows)
        cfgs[f"loraplex_top2_blend_{mode}"] = lambda d=dec: decode(d, blend_rows)
    times: dict[str, list[float]] = {k: [] for k in cfgs}
    for k, fn in cfgs.items():  # warm-up (and compilation)
        t = time.perf_counter()
        fn()
        _sync(device)
        progress(f"warm-up {k}: {time.perf_counter() - t:.1f} s")
    for r in range(spec.repeats):
        for k, fn in cfgs.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t)
        progress(f"repeat {r + 1}/{spec.repeats} done")
    base = statistics.median(times["base_only"])
    results = {
        k: {
            "s": round(statistics.median(ts), 4),
            "tok_per_s": round(spec.batch * spec.new_tokens / statistics.median(ts), 1),
            "vs_base": round(base / statistics.median(ts), 3),
            "runs": [round(t, 4) for t in ts],
        }
        for k, ts in times.items()
    }
    peft_tokens = hf(peft, adapter_names=[names[s] for s in row_adapters])[:, spec.prompt_tokens :].tolist()
    our_tokens = decode(decoders["eager"], distinct_rows)
    agree = sum(a == b for a, b in zip(peft_tokens, our_tokens)) / spec.batch
    return {
        "setup": {**spec.__dict__, "targets": ",".join(spec.targets), "torch": torch.__version__},
        "results": results,
        "ratios": {
            "distinct_vs_base": results["loraplex_distinct_eager"]["vs_base"],
            "distinct_vs_peft_mixed": round(
                results["peft_mixed_batch"]["s"] / results["loraplex_distinct_eager"]["s"], 3
            ),
            "top2_blend_vs_base": results["loraplex_top2_blend_eager"]["vs_base"],
            "ours_base_vs_hf_base": results["loraplex_base_eager"]["vs_base"],
        },
        "greedy_rows_equal_to_peft": round(agree, 3),
        "compile_errors": {m: d.forward.compile_error for m, d in decoders.items() if d.forward.compile_error},
    }
