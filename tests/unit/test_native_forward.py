"""Our own forward (packed tokens, preallocated KV cache, chunked prefill) against HF's forward and decoder."""

from __future__ import annotations

import random

import pytest
import torch

from loraplex.config.engine import EngineConfig
from loraplex.experts.choices import IncrementalText
from loraplex.experts.decoder import Decoder
from loraplex.experts.engine import Engine, Request
from loraplex.experts.forward import Chunk, PackedForward, StepBatch, unsupported_reason
from loraplex.experts.hf_decoder import HFDecoder
from loraplex.experts.sampling import SamplingParams, choose_tokens
from loraplex.experts.scheduler import Scheduler

PROMPTS = [
    "my order ORD-12345 never arrived",
    "reset my password please",
    "great service, thank you",
    "the invoice was charged twice, refund me",
]


def _engine(tiny, **kw) -> Engine:
    cfg = dict(base_model=str(tiny["base"]), adapter_roots=[str(tiny["roots"])], max_slots=4, max_host_adapters=8)
    return Engine.from_config(EngineConfig(**cfg, max_rank=16, **kw))


@pytest.fixture(scope="module")
def hf_engine(tiny):
    return _engine(tiny, forward="hf")


@pytest.fixture(scope="module")
def chunked(tiny):
    """The native forward with a 3-token prefill budget: every prompt spans several steps."""
    return _engine(tiny, prefill_tokens=3)


def test_native_forward_is_picked_for_llama_and_hf_on_request(engine, hf_engine):
    assert engine.forward_kind == "native" and engine.forward_reason is None
    assert isinstance(engine.new_decoder(), Decoder)
    assert hf_engine.forward_kind == "hf" and isinstance(hf_engine.new_decoder(), HFDecoder)


def test_models_our_forward_does_not_cover_name_the_reason():
    from transformers import MistralConfig, MistralForCausalLM

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=50)
    windowed = MistralForCausalLM(MistralConfig(**small, num_key_value_heads=2, sliding_window=8))
    assert "sliding_window=8" in unsupported_reason(windowed, ["model.layers.0.self_attn.q_proj"])
    plain = MistralForCausalLM(MistralConfig(**small, num_key_value_heads=2, sliding_window=None))
    assert unsupported_reason(plain, ["model.layers.0.self_attn.q_proj"]) is None
    assert "outside the decoder layers" in unsupported_reason(plain, ["lm_head"])
    plain.config.model_type = "gpt_neox"
    assert "gpt_neox" in unsupported_reason(plain, [])


def test_packed_decode_and_chunks_equal_hf_logits_per_sequence(engine):
    """Two rows decoding and a third prefilled in two chunks, in the same forwards: each row's logits equal
    HF's forward over that row's whole sequence."""
    model = engine.wrapped.model
    fwd = PackedForward(model, rows=4)
    tok = engine.tokenizer
    seqs = [tok.encode(p) for p in PROMPTS[:3]]
    with torch.inference_mode():
        # rows 0 and 1 prefill in one forward (two chunks)
        a, b = seqs[0], seqs[1]
        batch = StepBatch(
            torch.tensor(a + b),
            torch.tensor(list(range(len(a))) + list(range(len(b)))),
            torch.tensor([0] * len(a) + [1] * len(b)),
            [],
            [Chunk(0, 0, len(a), 0), Chunk(1, 0, len(b), len(a))],
            torch.tensor([len(a) - 1, len(a) + len(b) - 1]),
        )
        fwd(batch)
        # decode one token in rows 0 and 1 while row 2 (sequence c) prefills its first half, then its second
        c = seqs[2]
        half = len(c) // 2
        got = []
        for step, (start, end) in enumerate([(0, half), (half, len(c))]):
            nxt = [5 + step, 7 + step]
            ids = nxt + c[start:end]
            pos = [len(a) + step, len(b) + step] + list(range(start, end))
            rows = [0, 1] + [2] * (end - start)
            batch = StepBatch(
                torch.tensor(ids),
                torch.tensor(pos),
                torch.tensor(rows),
                [0, 1],
                [Chunk(2, start, end - start, 2)],
                torch.tensor([0, 1, len(ids) - 1]),
            )
            got.append(fwd(batch))
        full = [a + [5, 6], b + [7, 8], c]
        for r, seq in enumerate(full):
            want = model(input_ids=torch.tensor([seq])).logits[0]  # [len, vocab]
            if r < 2:
                torch.testing.assert_close(got[0][r], want[len(seq) - 2], atol=1e-4, rtol=1e-4)
                torch.testing.assert_close(got[1][r], want[len(seq) - 1], atol=1e-4, rtol=1e-4)
            else:
                torch.testing.assert_close(got[1][2], want[-1], atol=1e-4, rtol=1e-4)


def _mixed_requests():
    blend = {"mode": "blend", "weights": {"a": 0.5, "c": 0.7}, "space": "logits"}
    return [
        Request.from_json(PROMPTS[0], "a", max_tokens=9, temperature=0),
        Request.from_json(PROMPTS[1] + " " + PROMPTS[3], "b", max_tokens=6, temperature=0, logprobs=2),
        Request.from_json("hi", blend, max_tokens=7, temperature=0),
        Request.from_json(PROMPTS[2], {"mode": "stack", "adapters": ["a", "c"]}, max_tokens=5, temperature=0),
        Request.from_json(PROMPTS[3], None, max_tokens=4, temperature=0, prompt_logprobs=1),
        Request.from_json(PROMPTS[0], "c", max_tokens=6, n=2, seed=11, temperature=0.9),
    ]


def _staggered(engine, reqs):
    """Requests added one per step, so each joins a batch that is already decoding."""
    out: dict[int, object] = {}
    s = Scheduler(engine, max_requests=len(reqs))
    pending = list(enumerate(reqs))
    while pending or s.busy:
        if pending:
            i, r = pending.pop(0)
            s.add(r, lambda res, i=i: out.__setitem__(i, res))
        s.step()
    return [out[i] for i in range(len(reqs))]


@pytest.mark.parametrize("how", ["together", "staggered"])
def test_native_and_chunked_decoders_equal_the_hf_decoder(engine, chunked, hf_engine, how):
    """Every mode, n copies, logprobs and prompt logprobs: tokens equal, log probabilities within 1e-4."""
    reqs = _mixed_requests()
    runs = {}
    for name, eng in (("hf", hf_engine), ("native", engine), ("chunked", chunked)):
        runs[name] = eng.generate(reqs) if how == "together" else _staggered(eng, reqs)
    for name in ("native", "chunked"):
        for want, got in zip(runs["hf"], runs[name]):
            assert got.token_ids == want.token_ids and got.text == want.text, name
            assert [c.token_ids for c in got.choices] == [c.token_ids for c in want.choices]
            for lw, lg in ((want.logprobs, got.logprobs), (want.prompt_logprobs, got.prompt_logprobs)):
                assert (lw is None) == (lg is None)
                for ew, eg in zip(lw or [], lg or []):
                    assert ew.token == eg.token
                    assert (ew.logprob is None and eg.logprob is None) or abs(ew.logprob - eg.logprob) < 1e-4


def test_joining_and_leaving_write_the_preallocated_cache_in_place(engine):
    """A join is an index update: the cache tensors stay the same storage while rows come and go."""
    s = Scheduler(engine, max_requests=8)
    s.add(Request.from_json(PROMPTS[0], "a", max_tokens=12, ignore_eos=True), lambda r: None)
    s.step()
    cache = s.decoder.forward.cache
    cache.ensure(64)  # no growth during the test
    before = [t.data_ptr() for t in cache.keys + cache.values]
    for i, p in enumerate(PROMPTS[1:]):
        s.add(Request.from_json(p, "b", max_tokens=3 + i, ignore_eos=True), lambda r: None)
        s.step()
    while s.busy:
        s.step()
    assert [t.data_ptr() for t in cache.keys + cache.values] == before
    assert cache.free_rows == cache.rows  # every row went back


def test_a_long_prompt_is_prefilled_in_budget_chunks_while_others_decode(chunked):
    s = Scheduler(chunked, max_requests=4)
    tokens = []
    long = " ".join(PROMPTS)
    n_prompt = len(chunked.encode(long, 2))
    s.add(Request.from_json(PROMPTS[1], "a", max_tokens=n_prompt // 3 + 5, ignore_eos=True), lambda r: None)
    while s.decoder.last_size == 0:
        s.step()  # the first prompt's chunks
    s.add(Request.from_json(long, "b", max_tokens=2, ignore_eos=True), lambda r: tokens.append(r))
    steps = 0
    while not tokens:
        assert s.step() >= 1  # the running row gets a token in every step of the long prompt's prefill
        steps += 1
    assert steps >= n_prompt // 3  # 3 prompt tokens per step


def test_incremental_text_equals_decoding_everything(engine):
    tok = engine.tokenizer
    rng = random.Random(0)
    vocab = len(tok)
    for _ in range(30):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 25))]
        for skip in (True, False):
            inc = IncrementalText(tok, skip)
            for n in range(1, len(ids) + 1):
                inc.extend(ids[:n])
                assert inc.text + inc.pending == tok.decode(ids[:n], skip_special_tokens=skip)


def test_vectorised_sampler_follows_the_filtered_distribution():
    """top-k, top-p and min-p filtered in one batch; frequencies match the renormalised probabilities."""
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]] * 3))
    params = [
        SamplingParams(max_tokens=1, temperature=1.0, top_k=2),
        SamplingParams(max_tokens=1, temperature=1.0, top_p=0.75),  # keeps 0.4, 0.3 and 0.2 (cumsum before < 0.75)
        SamplingParams(max_tokens=1, temperature=1.0, min_p=0.6),  # keeps p >= 0.24
    ]
    want = [[4 / 7, 3 / 7, 0, 0], [4 / 9, 3 / 9, 2 / 9, 0], [4 / 7, 3 / 7, 0, 0]]
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    counts = torch.zeros(3, 4)
    draws = 3000
    for _ in range(draws):
        t = choose_tokens(logits.clone(), params, gens)
        counts[torch.arange(3), t] += 1
    torch.testing.assert_close(counts / draws, torch.tensor(want), atol=0.035, rtol=0)
    again = [torch.Generator().manual_seed(i) for i in range(3)]
    first = [choose_tokens(logits.clone(), params, again).tolist() for _ in range(5)]
    again = [torch.Generator().manual_seed(i) for i in range(3)]
    assert first == [choose_tokens(logits.clone(), params, again).tolist() for _ in range(5)]  # seeded


def test_compiled_mlp_blocks_give_the_eager_tokens_and_lora_on_the_mlp_says_why_not(tiny):
    """One compiled graph for every layer's norm + MLP (LoRA only on attention); with LoRA on the MLP the
    forward stays eager and names the reason."""
    reqs = [Request.from_json(p, "a", max_tokens=6, temperature=0) for p in PROMPTS]  # a: q_proj, v_proj
    attn_only = dict(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    eager = _engine(tiny, **attn_only).generate(reqs)
    s = Scheduler(_engine(tiny, compile=True, **attn_only), max_requests=8)
    compiled = {}
    for i, r in enumerate(reqs):
        s.add(r, lambda res, i=i: compiled.__setitem__(i, res))
    while s.busy:
        s.step()
    assert s.decoder.forward.compile_error is None  # it ran compiled, not through the fallback
    assert [compiled[i].token_ids for i in range(len(reqs))] == [r.token_ids for r in eager]
    blocked = _engine(tiny, compile=True).new_decoder().forward  # default targets include the MLP
    assert "MLP projections carry LoRA" in blocked.compile_error


def test_bf16_on_cpu_keeps_lora_slots_in_float32(tiny):
    """bf16 weights, float32 adapter slots (CPU bf16 bmm is slow), and the engine decodes with them."""
    bf16 = _engine(tiny, dtype="bfloat16")
    layer = next(iter(bf16.wrapped.layers.values()))
    assert layer.base.weight.dtype == torch.bfloat16 and layer.lora_A.dtype == torch.float32
    reqs = [Request.from_json(p, "b", max_tokens=4, temperature=0) for p in PROMPTS]
    got = bf16.generate(reqs)
    assert all(r.completion_tokens == 4 for r in got)
