"""oneDNN-prepacked linears (`experts.prepacked`): equal to `F.linear`, used by our forward, skipped with a reason."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from loraplex.config.engine import EngineConfig
from loraplex.experts.composition import Base, Single
from loraplex.experts.engine import Engine, Request
from loraplex.experts.lora.layers import MultiLoraLinear
from loraplex.experts.prepacked import PrepackedLinear, prepack_blocker, prepack_linears
from loraplex.experts.sampling import SamplingParams

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch build without oneDNN")


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape", [(1, 48), (2, 48), (3, 48), (40, 48), (2, 5, 48)])
def test_prepacked_linear_equals_f_linear(dtype, tol, shape):
    torch.manual_seed(0)
    base = nn.Linear(48, 80, bias=True).to(dtype)
    x = torch.randn(*shape, dtype=dtype)
    with torch.inference_mode():
        got, want = PrepackedLinear(base)(x).float(), F.linear(x, base.weight, base.bias).float()
    assert got.shape == want.shape == (*shape[:-1], 80)
    assert torch.allclose(got, want, rtol=tol, atol=tol * float(want.abs().max()))


def test_gradients_flow_through_a_prepacked_layer_as_through_f_linear():
    torch.manual_seed(0)
    base = nn.Linear(16, 8, bias=False).requires_grad_(False)
    packed = PrepackedLinear(base)
    x = torch.randn(4, 16, requires_grad=True)
    packed(x).pow(2).sum().backward()
    want = torch.autograd.grad(F.linear(x, base.weight).pow(2).sum(), x)[0]
    assert x.grad is not None and torch.allclose(x.grad, want, atol=1e-5)


def _engine(tiny, **kw) -> Engine:
    cfg = dict(base_model=str(tiny["base"]), adapter_roots=[str(tiny["roots"])], max_slots=4, max_host_adapters=8)
    return Engine.from_config(EngineConfig(**cfg, max_rank=16, device="cpu", **kw))


def test_the_engine_prepacks_every_decoder_linear_and_the_head_lora_bases_included(engine):
    model = engine.wrapped.model
    assert engine.prepack.skipped is None
    assert "lm_head" in engine.prepack.packed and isinstance(model.lm_head, PrepackedLinear)
    layer = model.model.layers[0]
    q = layer.self_attn.q_proj
    assert isinstance(q, MultiLoraLinear) and isinstance(q.base, PrepackedLinear)  # LoRA stays on top
    gate = layer.mlp.gate_proj  # adapter b targets every linear, so the MLP is wrapped too
    assert isinstance(gate, PrepackedLinear) or isinstance(gate.base, PrepackedLinear)
    plain = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    assert plain == []


def test_prepacked_engine_generates_the_unpacked_engines_tokens_and_logprobs(engine, tiny):
    plain = _engine(tiny, cpu_prepack=False)
    assert plain.prepack.skipped == "cpu_prepack: false in the engine config" and not plain.prepack.packed
    params = SamplingParams(max_tokens=6, ignore_eos=True, logprobs=1)
    prompts = ["reset my password please", "my order never arrived", "great service"]
    comps = [Base(), Single("a"), Single("b")]  # base, q/v LoRA, LoRA on every linear (MLP included)
    a = engine.generate([Request(p, c, params) for p, c in zip(prompts, comps)])
    b = plain.generate([Request(p, c, params) for p, c in zip(prompts, comps)])
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    for ra, rb in zip(a, b):
        la = [t.logprob for t in ra.logprobs]
        lb = [t.logprob for t in rb.logprobs]
        assert la == pytest.approx(lb, abs=1e-4)


CASES = [
    ("hf forward", dict(forward="hf"), "HF's forward runs"),
    ("compile", dict(compile=True), "compile: true"),
    ("turned off", dict(cpu_prepack=False), "cpu_prepack: false"),
]


@pytest.mark.parametrize("name, change, match", CASES, ids=[c[0] for c in CASES])
def test_prepacking_is_skipped_with_a_reason(tiny, name, change, match):
    e = _engine(tiny, **change)
    assert match in e.prepack.skipped and not e.prepack.packed
    assert not any(isinstance(m, PrepackedLinear) for m in e.wrapped.model.modules())


def test_models_prepacking_cannot_serve_say_why():
    half = nn.Sequential(nn.Linear(4, 4)).to(torch.float16)
    assert "float16" in prepack_blocker(half)
    report = prepack_linears(nn.Sequential(nn.Linear(4, 4)))
    assert report.skipped == "no nn.Linear under 'model.layers.'" and not report.packed
