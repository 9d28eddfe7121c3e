"""The batched multi-LoRA layer against PEFT itself (fp32, atol 1e-4)."""

from __future__ import annotations

import torch

from tests.unit.conftest import peft_model

ATOL = 1e-4
PROMPTS = [
    "my order ORD-12345 never arrived",
    "reset my password please",
    "great service, thank you",
    "the invoice was charged twice",
]


def _enc(engine, prompts=PROMPTS):
    return engine.tokenizer(prompts, return_tensors="pt", padding=True)


def _ours(engine, rows_by_name, prompts=PROMPTS):
    names = sorted({n for r in rows_by_name for n in r})
    slots = engine.store.acquire(names)
    rows = [{slots[n]: w for n, w in r.items()} for r in rows_by_name]
    enc = _enc(engine, prompts)
    with torch.inference_mode(), engine.wrapped.batch(rows):
        return engine.wrapped.model(**enc).logits


def _peft(model, tiny_engine, prompts=PROMPTS, **kw):
    with torch.inference_mode():
        return model(**_enc(tiny_engine, prompts), **kw).logits


def test_single_adapter_matches_peft_set_adapter(engine, tiny):
    ref = peft_model(tiny)
    for name in ("a", "b", "c"):
        ref.set_adapter(name)
        ours = _ours(engine, [{name: 1.0}] * len(PROMPTS))
        torch.testing.assert_close(ours, _peft(ref, engine), atol=ATOL, rtol=0)


def test_mixed_batch_matches_peft_adapter_names(engine, tiny):
    ref = peft_model(tiny)
    names = ["a", "b", "__base__", "c"]
    ours = _ours(engine, [{n: 1.0} if n != "__base__" else {} for n in names])
    torch.testing.assert_close(ours, _peft(ref, engine, adapter_names=names), atol=ATOL, rtol=0)
    # and the adapters really differ from each other and from the base (the test can fail)
    assert (ours[0] - _ours(engine, [{}] * 4)[0]).abs().max() > 1e-2


def test_stack_matches_peft_multiple_active_adapters(engine, tiny):
    ref = peft_model(tiny)
    ref.base_model.set_adapter(["a", "b"])
    ours = _ours(engine, [{"a": 1.0, "b": 1.0}] * len(PROMPTS))
    torch.testing.assert_close(ours, _peft(ref, engine), atol=ATOL, rtol=0)


def test_weighted_blend_matches_peft_cat_combination(engine, tiny):
    ref = peft_model(tiny)
    ref.add_weighted_adapter(["a", "b", "c"], [0.7, 0.2, 0.1], "mix", combination_type="cat")
    ref.set_adapter("mix")
    ours = _ours(engine, [{"a": 0.7, "b": 0.2, "c": 0.1}] * len(PROMPTS))
    torch.testing.assert_close(ours, _peft(ref, engine), atol=ATOL, rtol=0)


def test_per_row_blends_in_one_batch_match_peft_rowwise(engine, tiny):
    """Different weighted mixes per row in ONE forward equal each mix run alone through PEFT."""
    ref = peft_model(tiny)
    mixes = [{"a": 0.7, "b": 0.3}, {"c": 1.0}, {"a": 0.5, "c": 2.0}, {}]
    ours = _ours(engine, mixes)
    for i, mix in enumerate(mixes):
        if mix:
            ref.add_weighted_adapter(list(mix), list(mix.values()), f"m{i}", combination_type="cat")
            ref.set_adapter(f"m{i}")
            want = _peft(ref, engine)[i]
        else:
            with ref.disable_adapter():
                want = _peft(ref, engine)[i]
        torch.testing.assert_close(ours[i], want, atol=ATOL, rtol=0)


def test_no_adapter_equals_plain_base_model(engine, tiny):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny["base"]).eval()
    enc = _enc(engine)
    with torch.inference_mode():
        want = base(**enc).logits
        with engine.wrapped.batch(None):
            plain = engine.wrapped.model(**enc).logits
    torch.testing.assert_close(plain, want, atol=0, rtol=0)
    torch.testing.assert_close(_ours(engine, [{}] * 4), want, atol=0, rtol=0)


def test_hf_generate_with_kv_cache_matches_peft_generate(engine, tiny):
    ref = peft_model(tiny)
    names = ["a", "b", "c", "__base__"]
    enc = _enc(engine)
    with torch.inference_mode():
        want = ref.generate(**enc, adapter_names=names, max_new_tokens=8, do_sample=False)
    slots = engine.store.acquire(["a", "b", "c"])
    rows = [{slots[n]: 1.0} if n != "__base__" else {} for n in names]
    with torch.inference_mode(), engine.wrapped.batch(rows):
        got = engine.wrapped.model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert torch.equal(got, want)
