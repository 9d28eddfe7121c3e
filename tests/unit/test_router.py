"""Router losses against hand-computed values, the routing policy, and save/load."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from loraplex.experts.errors import ConfigError
from loraplex.router.losses import expert_share, load_balancing_loss, routing_entropy, soft_cross_entropy, z_loss
from loraplex.router.network import RouterNet
from loraplex.router.policy import PolicyConfig, decide, top_k_renormalised
from loraplex.router.router import Router
from loraplex.router.training import TrainConfig, train_router

EXPERTS = ["intent", "sentiment", "entities"]


def test_balance_loss_is_alpha_at_uniform_routing():
    # f = [1/3]*3 (argmax cycles over experts), P = [1/3]*3 -> N * sum f P = 3 * 3 * 1/9 = 1
    logits = torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0]])
    assert load_balancing_loss(logits, alpha=1.0).item() == pytest.approx(1.0, abs=1e-6)
    assert load_balancing_loss(logits, alpha=0.5).item() == pytest.approx(0.5, abs=1e-6)


def test_balance_loss_is_n_at_total_collapse():
    logits = torch.tensor([[100.0, 0, 0]] * 4)  # everything to expert 0 with probability ~1
    assert load_balancing_loss(logits).item() == pytest.approx(3.0, abs=1e-4)


def test_balance_loss_hand_computed_mixed_case():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]]))
    # f = [0.5, 0.5, 0], P = [0.4, 0.5, 0.1] -> 3 * (0.2 + 0.25) = 1.35
    assert load_balancing_loss(logits).item() == pytest.approx(1.35, abs=1e-5)


def test_balance_loss_has_gradient_toward_balance():
    logits = torch.tensor([[3.0, 0, 0]] * 4, requires_grad=True)
    load_balancing_loss(logits).backward()
    assert logits.grad[0, 0] > 0  # pushing the overloaded expert's logit down lowers the loss


def test_z_loss_hand_computed():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    want = (math.log(2.0) ** 2 + math.log(4.0) ** 2) / 2
    assert z_loss(logits).item() == pytest.approx(want, abs=1e-6)


def test_soft_ce_entropy_and_share():
    logits = torch.tensor([[0.0, 0.0, 0.0]])
    assert soft_cross_entropy(logits, torch.tensor([[1.0, 0, 0]])).item() == pytest.approx(math.log(3), abs=1e-6)
    assert routing_entropy(torch.tensor([[1 / 3] * 3])).item() == pytest.approx(math.log(3), abs=1e-6)
    assert expert_share(torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])).tolist() == [0.5, 0.0, 0.5]


def test_top_k_renormalisation():
    vals, idx = top_k_renormalised(torch.tensor([[0.5, 0.3, 0.2]]), 2)
    assert idx.tolist() == [[0, 1]]
    assert vals[0].tolist() == pytest.approx([0.625, 0.375])


POLICY_CASES = [
    # name, probs, policy, expected (mode, weights, fallback)
    ("confident top1", [0.9, 0.06, 0.04], PolicyConfig(top_k=1), ("moe", {"intent": 1.0}, False)),
    (
        "confident top2",
        [0.7, 0.2, 0.1],
        PolicyConfig(top_k=2, confidence_floor=0.5),
        ("moe", {"intent": 0.7 / 0.9, "sentiment": 0.2 / 0.9}, False),
    ),
    (
        "unsure -> soft top2",
        [0.4, 0.35, 0.25],
        PolicyConfig(top_k=1, confidence_floor=0.5, fallback="soft_topk"),
        ("moe", {"intent": 0.4 / 0.75, "sentiment": 0.35 / 0.75}, True),
    ),
    ("unsure -> base", [0.4, 0.35, 0.25], PolicyConfig(confidence_floor=0.5, fallback="base"), ("base", {}, True)),
    (
        "unsure -> top1 by default",
        [0.4, 0.35, 0.25],
        PolicyConfig(confidence_floor=0.5),
        ("moe", {"intent": 1.0}, True),
    ),
    (
        "unsure -> top1, flagged",
        [0.4, 0.35, 0.25],
        PolicyConfig(top_k=2, confidence_floor=0.5, fallback="top1"),
        ("moe", {"intent": 1.0}, True),
    ),
]


@pytest.mark.parametrize("name,probs,policy,expected", POLICY_CASES, ids=[c[0] for c in POLICY_CASES])
def test_policy_decisions(name, probs, policy, expected):
    d = decide(torch.log(torch.tensor([probs])), EXPERTS, policy)[0]
    assert (d.mode, d.fallback) == (expected[0], expected[2])
    assert d.weights == pytest.approx(expected[1])
    assert d.confidence == pytest.approx(max(probs), abs=1e-6)


def test_temperature_flattens_confidence():
    logits = torch.log(torch.tensor([[0.8, 0.1, 0.1]]))
    hot = decide(logits, EXPERTS, PolicyConfig(temperature=4.0, confidence_floor=0.0))[0]
    assert hot.confidence < 0.5


CONFIG_CASES = [
    ("top_k", dict(top_k=0), r"top_k\n  Input should be greater than or equal to 1"),
    ("temperature", dict(temperature=0.0), r"temperature\n  Input should be greater than 0"),
    ("floor", dict(confidence_floor=1.5), r"confidence_floor\n  Input should be less than or equal to 1"),
    ("fallback", dict(fallback="random"), r"fallback\n  Input should be 'base', 'soft_topk' or 'top1'"),
    ("unknown field", dict(floor=0.5), r"floor\n  Extra inputs are not permitted"),
]


@pytest.mark.parametrize("name,kw,match", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_policy_config_errors(name, kw, match):
    with pytest.raises(ValidationError, match=match):
        PolicyConfig(**kw)


def test_policy_defaults_have_one_source():
    """The Serve app's routing config and a router's own policy are the same model: the same defaults."""
    from loraplex.config.app import RoutingConfig

    assert RoutingConfig().model_dump(include=set(PolicyConfig.model_fields)) == PolicyConfig().model_dump()
    assert PolicyConfig().confidence_floor == 0.6


class _Feat:
    """Bag-of-keywords features: enough to test training and save/load logic without an encoder."""

    dim = 3
    words = ("intent", "feel", "extract")

    def encode(self, texts):
        return torch.tensor([[float(w in t) for w in self.words] for t in texts])

    def spec(self):
        return {"kind": "sentence", "path": "unused"}


def test_training_learns_and_uniform_targets_give_low_confidence(tmp_path):
    feat = _Feat()
    texts = ["intent please", "how do they feel", "extract ids", "no instruction here"] * 30
    targets = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1 / 3, 1 / 3, 1 / 3]] * 30)
    net, hist = train_router(
        feat.encode(texts), targets, TrainConfig(epochs=60, balance_coef=0.01, hidden=16, dropout=0.0), progress=False
    )
    assert hist[-1]["accuracy"] == 1.0 and hist[-1]["loss"] < hist[0]["loss"]
    router = Router(feat, net, EXPERTS, PolicyConfig(confidence_floor=0.6))
    router.save(tmp_path / "r")
    loaded = Router.load(tmp_path / "r", featurizer=feat)
    d = loaded.route(["what intent", "bare message"])
    assert d[0].weights == {"intent": 1.0} and not d[0].fallback
    assert d[1].confidence < 0.5 and d[1].fallback
    torch.testing.assert_close(loaded.logits(texts[:4]), router.logits(texts[:4]))


def test_collapse_warning(caplog):
    feat = torch.ones(32, 2)
    targets = torch.tensor([[1.0, 0.0]] * 32)
    with caplog.at_level("WARNING"):
        train_router(feat, targets, TrainConfig(epochs=3, hidden=4), progress=False)
    assert "router collapse" in caplog.text


def test_router_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="no trained router at"):
        Router.load(tmp_path)
    with pytest.raises(ConfigError, match="3 outputs but 2 experts"):
        Router(_Feat(), RouterNet(3, 3), ["a", "b"], PolicyConfig())


def test_hidden_state_featurizer_pools_over_real_tokens_only(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraplex.router.featurizers import HiddenStateFeaturizer

    model = AutoModelForCausalLM.from_pretrained(tiny["base"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny["base"])
    texts = ["reset my password please now", "hi"]
    for pooling in ("mean", "first"):
        batch = HiddenStateFeaturizer(model, tok, pooling).encode(texts)  # padded batch
        alone = torch.cat([HiddenStateFeaturizer(model, tok, pooling).encode([t]) for t in texts])
        torch.testing.assert_close(batch, alone, atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match=r"unknown pooling 'max'; valid: \['mean', 'first'\]"):
        HiddenStateFeaturizer(model, tok, "max")


def test_sentence_featurizer_loads_the_packaged_minilm_offline():
    from loraplex.router.featurizers import SentenceFeaturizer

    f = SentenceFeaturizer(paragraphs=False)
    e = f.encode(["reset my password", "I forgot my password", "the weather is nice today"])
    assert e.shape == (3, 384) and f.pooling == "mean" and f.normalize
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.3  # paraphrases are closer than unrelated text


def test_paragraph_features_are_mean_and_max_of_paragraph_embeddings():
    from loraplex.router.featurizers import SentenceFeaturizer

    whole = SentenceFeaturizer(paragraphs=False, dtype="float32")
    para = SentenceFeaturizer(paragraphs=True, dtype="float32")
    texts = ["Classify the intent.\n\nMessage: I was charged twice.\n\nAnswer:", "one paragraph only"]
    got = para.encode(texts)  # [2, 768]
    assert got.shape == (2, 2 * 384) and para.dim == 768 and para.spec()["paragraphs"] is True
    parts = whole.encode(["Classify the intent.", "Message: I was charged twice.", "Answer:"])  # [3, 384]
    torch.testing.assert_close(got[0], torch.cat([parts.mean(0), parts.max(0).values]), atol=1e-5, rtol=0)
    single = whole.encode(["one paragraph only"])[0]
    torch.testing.assert_close(got[1], torch.cat([single, single]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", ["bfloat16", "auto"])
def test_reduced_precision_sentence_features_match_float32(dtype):
    """The fast path (bf16 on CPU) must give the router the same features it was trained on."""
    from loraplex.router.featurizers import SentenceFeaturizer, make_featurizer

    texts = ["What is the intent?\n\nMessage: I was charged twice for ORD-12345.\n\nAnswer:", "hi"]
    ref = SentenceFeaturizer(dtype="float32").encode(texts)  # paragraph features: mean and max parts
    fast = make_featurizer({"kind": "sentence", "path": "default", "dtype": dtype, "paragraphs": True})
    got = fast.encode(texts)
    assert got.dtype == torch.float32 and fast.spec()["dtype"] == dtype
    assert torch.nn.functional.cosine_similarity(got, ref).min() > 0.999


def test_unknown_featurizer_dtype_names_the_choices():
    from loraplex.router.featurizers import SentenceFeaturizer

    with pytest.raises(
        ConfigError, match=r"unknown featurizer dtype 'int4'; valid: \['auto', 'float32', 'bfloat16', 'float16'\]"
    ):
        SentenceFeaturizer(dtype="int4")


def test_truncated_encoder_keeps_its_first_layers_and_round_trips_through_the_spec():
    from loraplex.router.featurizers import SentenceFeaturizer, make_featurizer

    f = SentenceFeaturizer(num_layers=2, dtype="float32")
    assert len(f.model.encoder.layer) == 2 and f.spec()["num_layers"] == 2
    again = make_featurizer(f.spec())
    texts = ["Classify the intent.\n\nMessage: my card was charged twice"]
    torch.testing.assert_close(again.encode(texts), f.encode(texts))
    assert not torch.allclose(f.encode(texts), SentenceFeaturizer(dtype="float32").encode(texts), atol=1e-3)
    with pytest.raises(ConfigError, match=r"num_layers must be in \[1, 6\]"):
        SentenceFeaturizer(num_layers=7)
