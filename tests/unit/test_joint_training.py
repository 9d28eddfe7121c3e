"""Joint router + adapter training: the differentiable mixer against PEFT, gradient flow, PEFT-format save.

A tiny random Llama built here (no demo needed); nothing starts Ray.
"""

from __future__ import annotations

import pytest
import torch

from loraplex.demo.joint_training import LoraMixer, gate_weights

ATOL = 1e-4
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
R, ALPHA = 4, 8


def _llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()


def _batch(n: int = 4, t: int = 7, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 64, (n, t), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # some left padding
    labels = ids.clone()
    labels[mask == 0] = -100
    return ids, mask, labels


@pytest.fixture(scope="module")
def peft_adapters(tmp_path_factory):
    """Three real PEFT adapters (non-zero B) on the tiny Llama, saved with PEFT's own save_pretrained."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("joint")
    paths = []
    for i in range(3):
        torch.manual_seed(10 + i)
        model = get_peft_model(
            _llama(),
            LoraConfig(
                r=R, lora_alpha=ALPHA, target_modules=list(TARGETS), init_lora_weights=False, task_type="CAUSAL_LM"
            ),
        )
        model.save_pretrained(root / f"e{i}")
        paths.append(root / f"e{i}")
    return paths


def _mixer(peft_adapters):
    mixer = LoraMixer(_llama(), ["e0", "e1", "e2"], r=R, alpha=ALPHA, target_modules=TARGETS)
    for i, p in enumerate(peft_adapters):
        mixer.load_adapter(i, p)
    return mixer


def _peft(peft_adapters):
    from peft import PeftModel

    model = PeftModel.from_pretrained(_llama(), peft_adapters[0], adapter_name="e0")
    for i, p in enumerate(peft_adapters[1:], start=1):
        model.load_adapter(p, adapter_name=f"e{i}")
    return model.eval()


def test_one_hot_mixer_equals_peft_single_adapter(peft_adapters):
    mixer, ref = _mixer(peft_adapters), _peft(peft_adapters)
    ids, mask, _ = _batch()
    with torch.no_grad():
        for i in range(3):
            w = torch.zeros(ids.shape[0], 3)
            w[:, i] = 1.0
            with mixer.use(w):
                ours = mixer.model(input_ids=ids, attention_mask=mask).logits
            ref.set_adapter(f"e{i}")
            torch.testing.assert_close(ours, ref(input_ids=ids, attention_mask=mask).logits, atol=ATOL, rtol=0)
        # per-row one-hot in ONE batch == PEFT's mixed-batch adapter_names; no weights == the bare base
        rows = [0, 2, 1, 0]
        with mixer.use(torch.nn.functional.one_hot(torch.tensor(rows), 3).float()):
            ours = mixer.model(input_ids=ids, attention_mask=mask).logits
        want = ref(input_ids=ids, attention_mask=mask, adapter_names=[f"e{i}" for i in rows]).logits
        torch.testing.assert_close(ours, want, atol=ATOL, rtol=0)
        with ref.disable_adapter():
            base = ref(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(mixer.model(input_ids=ids, attention_mask=mask).logits, base, atol=ATOL, rtol=0)
        assert (ours - base).abs().max() > 1e-2  # the adapters really change the output


def test_answer_loss_equals_hf_causal_lm_loss(peft_adapters):
    from loraplex.demo.joint_training import answer_loss

    mixer = _mixer(peft_adapters)
    ids, mask, labels = _batch()
    labels[:, :3] = -100  # loss on a suffix only, like the answer tokens
    w = gate_weights(torch.randn(ids.shape[0], 3), 2)
    with torch.no_grad(), mixer.use(w):
        want = mixer.model(input_ids=ids, attention_mask=mask, labels=labels).loss
        torch.testing.assert_close(answer_loss(mixer.model, ids, mask, labels), want, atol=1e-5, rtol=0)


def test_standardized_router_folds_into_plain_routernet():
    from loraplex.demo.joint_training import StandardizedRouter
    from loraplex.router.network import RouterNet

    torch.manual_seed(0)
    x = 3.0 + 0.2 * torch.randn(16, 32)
    wrapped = StandardizedRouter(RouterNet(32, 3, hidden=8, dropout=0.0), x.mean(0), x.std(0)).eval()
    folded = wrapped.folded().eval()
    assert type(folded) is RouterNet and set(folded.state_dict()) == set(wrapped.net.state_dict())
    torch.testing.assert_close(folded(x), wrapped(x), atol=1e-4, rtol=0)


def test_soft_weights_equal_weighted_sum_of_deltas(peft_adapters):
    mixer = _mixer(peft_adapters)
    x = torch.randn(2, 5, 32)
    name, layer = next(iter(mixer.layers.items()))
    w = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.25, 0.75]])
    with torch.no_grad(), mixer.use(w):
        ours = layer(x)
    want = layer.base(x) + sum(
        w[:, i, None, None] * layer.scale * (x @ layer.lora_A[i].T @ layer.lora_B[i].T) for i in range(3)
    )
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=0)


def test_gate_weights_topk_renormalised():
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 1.0]])
    w = gate_weights(logits, 2)
    assert torch.allclose(w.sum(-1), torch.ones(2))
    assert w[0, 2] == 0 and w[1, 0] == 0
    p = logits[0, :2].softmax(-1)
    torch.testing.assert_close(w[0, :2], p)
    assert torch.equal(gate_weights(logits, 1), torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
    torch.testing.assert_close(
        gate_weights(logits, 1, renormalize=False).max(-1).values, logits.softmax(-1).max(-1).values
    )


@pytest.mark.parametrize("top_k,renormalize,selected", [(2, True, (0, 1)), (1, False, (0,))])
def test_gradients_reach_router_and_selected_adapters_only(peft_adapters, top_k, renormalize, selected):
    from loraplex.router.network import RouterNet

    mixer = _mixer(peft_adapters)
    for p in mixer.parameters():
        p.requires_grad_(True)
    torch.manual_seed(0)
    net = RouterNet(32, 3, hidden=16, dropout=0.0)
    with torch.no_grad():  # make the router pick expert 0 (then 1) for every row
        net.layers[-1].bias.copy_(torch.tensor([6.0, 3.0, -6.0]))
    ids, mask, labels = _batch()
    with torch.no_grad(), mixer.use(None):
        feats = mixer.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1].mean(1)
    w = gate_weights(net(feats), top_k, renormalize)
    assert set(w.nonzero()[:, 1].tolist()) == set(selected)
    with mixer.use(w):
        loss = mixer.model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters() if p.dim() == 2)
    for i in range(3):
        grads = [p.grad for p in mixer.parameters(i)]
        if i in selected:
            assert all(g is not None and g.abs().sum() > 0 for g in grads), (
                f"expert {i} is selected but got no gradient"
            )
        else:
            assert all(g is None or g.abs().max() == 0 for g in grads), f"unselected expert {i} got a gradient"
    assert all(p.grad is None for p in mixer.model.parameters() if not p.requires_grad)  # the base stays frozen


def test_saved_adapters_reload_in_peft_and_adapter_store(peft_adapters, tmp_path):
    from peft import PeftModel

    from loraplex.experts.adapters.loader import load_adapter

    mixer = _mixer(peft_adapters)
    with torch.no_grad():  # make the weights differ from what was loaded: a fresh state to save
        for p in mixer.parameters(1):
            p.add_(0.05 * torch.randn_like(p))
    path = mixer.save_adapter(1, tmp_path / "saved", base_path="tiny")
    assert (path / "adapter_config.json").is_file() and (path / "adapter_model.safetensors").is_file()
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in mixer.state_dict_for(1)
    ids, mask, _ = _batch()
    w = torch.zeros(ids.shape[0], 3)
    w[:, 1] = 1.0
    with torch.no_grad(), mixer.use(w):
        ours = mixer.model(input_ids=ids, attention_mask=mask).logits
    ref = PeftModel.from_pretrained(_llama(), path).eval()
    with torch.no_grad():
        torch.testing.assert_close(ref(input_ids=ids, attention_mask=mask).logits, ours, atol=ATOL, rtol=0)
    shapes = {name: (layer.base.in_features, layer.base.out_features) for name, layer in mixer.layers.items()}
    adapter = load_adapter("saved", path, shapes, max_rank=16, allow_pickle=False)
    assert set(adapter.modules) == set(mixer.layers) and adapter.rank == R
    a, b, scale = adapter.modules["model.layers.0.mlp.down_proj"]
    assert scale == ALPHA / R and torch.equal(b, mixer.layers["model.layers.0.mlp.down_proj"].lora_B[1].detach())
    assert isinstance(mixer.remove().model.layers[0].self_attn.q_proj, torch.nn.Linear)


def test_train_joint_end_to_end_tiny(tmp_path):
    """A few steps of the real loop on a tiny model; saves PEFT adapters + a loadable Router."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from loraplex.demo.joint_training import JointConfig, save_joint, train_joint
    from loraplex.router.router import Router
    from tests.unit.conftest import _tokenizer

    tok = _tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    )
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = JointConfig(
        steps=3,
        batch=4,
        lora_r=4,
        lora_alpha=8,
        router_hidden=16,
        router_ce_coef=1.0,
        train_examples={"intent": 8, "sentiment": 8, "entities": 8},
    )
    res = train_joint(model, tok, cfg, base_path=str(tmp_path / "base"), progress=False)
    assert res.history and res.history[-1]["step"] == 3 and res.stats["examples_seen"] == 12
    assert any(float(p.abs().sum()) > 0 for p in res.mixer.parameters() if p.shape[0] != 4)  # some B left zero init
    paths = save_joint(res, tmp_path / "out", base_path=str(tmp_path / "base"))
    router = Router.load(paths["router"])
    assert router.experts == list(cfg.experts) and router.logits(["hello world"]).shape == (1, 3)
    base = res.mixer.remove()
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # the base never changed
