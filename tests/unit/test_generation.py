"""Engine-level decoding: mixed compositions in one batch, against PEFT and hand-computed references."""

from __future__ import annotations

import torch

from loraplex.experts.composition import parse_composition
from loraplex.experts.engine import Request
from tests.unit.conftest import peft_model

PROMPTS = [
    "my order ORD-12345 never arrived",
    "reset my password please",
    "great service, thank you",
    "the invoice was charged twice",
]


def _req(prompt, comp=None, **kw):
    kw.setdefault("max_tokens", 6)
    return Request.from_json(prompt, comp, **kw)


def _peft_greedy(ref, tok, prompt, adapter, n):
    enc = tok([prompt], return_tensors="pt")
    with torch.inference_mode():
        out = ref.generate(**enc, adapter_names=[adapter], max_new_tokens=n, do_sample=False, eos_token_id=None)
    return out[0, enc["input_ids"].shape[1] :].tolist()


def test_mixed_batch_greedy_equals_peft_generate_per_row(engine, tiny):
    ref = peft_model(tiny)
    comps = ["a", "b", None, "c"]
    results = engine.generate([_req(p, c, max_tokens=6) for p, c in zip(PROMPTS, comps)])
    for p, c, r in zip(PROMPTS, comps, results):
        want = _peft_greedy(ref, engine.tokenizer, p, c or "__base__", 6)
        got = engine.tokenizer(r.text, add_special_tokens=False)["input_ids"]
        assert engine.tokenizer.decode(want, skip_special_tokens=True) == r.text, (c, got, want)


def test_rows_leaving_early_do_not_change_the_others(engine):
    together = engine.generate(
        [_req(PROMPTS[0], "a", max_tokens=1), _req(PROMPTS[1], "b", max_tokens=9), _req(PROMPTS[2], None, max_tokens=3)]
    )
    alone = [
        engine.generate([r])[0]
        for r in (
            _req(PROMPTS[0], "a", max_tokens=1),
            _req(PROMPTS[1], "b", max_tokens=9),
            _req(PROMPTS[2], None, max_tokens=3),
        )
    ]
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.completion_tokens for r in together] == [1, 9, 3]
    assert all(r.finish_reason == "length" for r in together)


def test_logits_blend_follows_the_reference_formula(engine, tiny):
    """Greedy decode of base + sum_i w_i (logits_i - base), recomputed with PEFT without a KV cache."""
    ref = peft_model(tiny)
    tok = engine.tokenizer
    weights = {"a": 0.6, "b": 0.9}
    result = engine.generate(
        [_req(PROMPTS[0], {"mode": "blend", "weights": weights, "space": "logits"}, max_tokens=6)]
    )[0]
    ids = tok([PROMPTS[0]], return_tensors="pt")["input_ids"]
    want = []
    with torch.inference_mode():
        for _ in range(6):
            with ref.disable_adapter():
                base = ref(input_ids=ids).logits[0, -1]
            mix = base.clone()
            for n, w in weights.items():
                ref.set_adapter(n)
                mix += w * (ref(input_ids=ids).logits[0, -1] - base)
            t = int(mix.argmax())
            want.append(t)
            ids = torch.cat([ids, torch.tensor([[t]])], dim=1)
    assert result.text == tok.decode(want, skip_special_tokens=True)
    delta = engine.generate([_req(PROMPTS[0], {"mode": "blend", "weights": weights}, max_tokens=6)])[0]
    assert delta.completion_tokens == 6


def test_moe_top_k_renormalises_router_scores(engine):
    top1 = engine.generate([_req(PROMPTS[1], {"mode": "moe", "top_k": 1, "weights": {"a": 0.5, "b": 0.3, "c": 0.2}})])[
        0
    ]
    single = engine.generate([_req(PROMPTS[1], "a")])[0]
    assert top1.text == single.text
    top2 = engine.generate([_req(PROMPTS[1], {"mode": "moe", "top_k": 2, "weights": {"a": 0.5, "b": 0.3, "c": 0.2}})])[
        0
    ]
    blend = engine.generate([_req(PROMPTS[1], {"mode": "blend", "weights": {"a": 0.625, "b": 0.375}})])[0]
    assert top2.text == blend.text


def test_chain_feeds_each_stage_output_into_the_next_prompt(engine):
    chain = {
        "mode": "chain",
        "stages": [{"adapter": "a", "prompt": "extract: {input}"}, {"adapter": "b", "prompt": "{previous} | {input}"}],
    }
    result = engine.generate([_req(PROMPTS[0], chain, max_tokens=4)])[0]
    first = engine.generate([_req(f"extract: {PROMPTS[0]}", "a", max_tokens=4)])[0]
    second = engine.generate([_req(f"{first.text} | {PROMPTS[0]}", "b", max_tokens=4)])[0]
    assert result.stages == [first.text, second.text]
    assert result.text == second.text
    # defect 9: usage counted the last stage only; every stage is a prompt + completion the replica ran
    assert result.prompt_tokens == first.prompt_tokens + second.prompt_tokens
    assert result.completion_tokens == first.completion_tokens + second.completion_tokens


def test_all_modes_in_one_mixed_batch_equal_their_solo_runs(engine):
    comps = [
        "a",
        {"mode": "stack", "adapters": ["a", "b"]},
        {"mode": "blend", "weights": {"b": 0.5, "c": 0.5}},
        {"mode": "blend", "weights": {"a": 0.5, "c": 0.5}, "space": "logits"},
        None,
        {"mode": "chain", "stages": [{"adapter": "c", "prompt": "{input}"}, {"prompt": "{previous}"}]},
    ]
    reqs = [_req(PROMPTS[i % 4], c, max_tokens=5) for i, c in enumerate(comps)]
    together = engine.generate(reqs)
    alone = [engine.generate([r])[0] for r in reqs]
    assert [r.text for r in together] == [r.text for r in alone]


def test_stop_strings_eos_and_streaming_callback(engine):
    full = engine.generate([_req(PROMPTS[2], "b", max_tokens=12)])[0]
    assert len(full.text) > 3
    stop = full.text[2:4]
    pieces: list[str] = []
    cut = engine.generate([Request.from_json(PROMPTS[2], "b", on_token=pieces.append, max_tokens=12, stop=[stop])])[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    assert "".join(pieces) == cut.text  # the stop string is never streamed, not even partially
    streamed: list[str] = []
    r = engine.generate([Request.from_json(PROMPTS[2], "b", on_token=streamed.append, max_tokens=12)])[0]
    assert "".join(streamed) == r.text == full.text


def test_sampling_is_seeded_and_top_k_one_is_greedy(engine):
    kw = dict(max_tokens=10, temperature=1.5, top_p=0.95)
    a1 = engine.generate([_req(PROMPTS[0], "a", seed=7, **kw)])[0]
    a2 = engine.generate([_req(PROMPTS[0], "a", seed=7, **kw), _req(PROMPTS[1], None, seed=1, **kw)])[0]
    assert a1.text == a2.text
    others = {engine.generate([_req(PROMPTS[0], "a", seed=s, **kw)])[0].text for s in range(5)}
    assert len(others) > 1
    greedy = engine.generate([_req(PROMPTS[0], "a", max_tokens=10)])[0]
    k1 = engine.generate([_req(PROMPTS[0], "a", max_tokens=10, temperature=1.0, top_k=1, seed=3)])[0]
    assert k1.text == greedy.text


def test_bad_request_fails_alone(engine):
    out = engine.generate_many([_req(PROMPTS[0], "a"), _req(PROMPTS[1], "nope"), _req(PROMPTS[2], "b")])
    assert isinstance(out[1], Exception) and "nope" in str(out[1]) and "['a', 'b', 'c']" in str(out[1])
    assert out[0].text and out[2].completion_tokens == 6


def test_parse_accepts_every_documented_mode():
    for spec in [
        "a",
        None,
        {"mode": "single", "adapter": "a"},
        {"mode": "stack", "adapters": ["a", "b"]},
        {"mode": "blend", "weights": {"a": 0.7, "b": 0.3}},
        {"mode": "blend", "weights": {"a": 1}, "space": "logits"},
        {"mode": "moe", "top_k": 2, "weights": {"a": 0.9, "b": 0.1}},
        {
            "mode": "chain",
            "stages": [{"adapter": "a", "prompt": "{input}"}, {"adapter": "b", "prompt": "{previous} {{x}}"}],
        },
    ]:
        parse_composition(spec)


def test_cancelled_request_leaves_the_batch_and_others_finish(engine):
    import threading

    cancel = threading.Event()
    seen: list[str] = []

    def on_token(delta):
        seen.append(delta)
        if len(seen) == 2:
            cancel.set()

    out = engine.generate(
        [
            Request.from_json(PROMPTS[0], "a", on_token=on_token, cancel=cancel, max_tokens=20, ignore_eos=True),
            _req(PROMPTS[1], "b", max_tokens=8, ignore_eos=True),
        ]
    )
    assert out[0].finish_reason == "cancelled" and out[0].completion_tokens <= 3
    assert out[1].completion_tokens == 8
    chain = {
        "mode": "chain",
        "stages": [{"adapter": "a", "prompt": "{input}"}, {"adapter": "b", "prompt": "{previous}"}],
    }
    done = threading.Event()
    done.set()
    r = engine.generate([Request.from_json(PROMPTS[0], chain, cancel=done, max_tokens=5)])[0]
    assert r.finish_reason == "cancelled" and r.stages == []  # no further stage after a cancel
