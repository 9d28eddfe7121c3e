"""Ingress logic (Gateway planning, adapter registry), without Serve or HTTP."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from loraplex.config.app import AppArgs
from loraplex.experts.errors import CompositionError, ConfigError, RequestError, SamplingError, UnknownAdapterError
from loraplex.gateway.planner import Gateway
from loraplex.gateway.protocol import ChatCompletionRequest, CompletionRequest, RouteRequest
from loraplex.router.network import RouterNet
from loraplex.router.policy import PolicyConfig
from loraplex.router.router import Router


class _KeywordFeat:
    dim = 3
    words = ("alpha", "beta", "gamma")

    def encode(self, texts):
        return torch.tensor([[5.0 * (w in t) for w in self.words] for t in texts])

    def spec(self):
        return {"kind": "sentence", "path": "unused"}


def _router():
    net = RouterNet(3, 3, hidden=3, dropout=0.0)
    with torch.no_grad():  # identity-ish network: keyword i -> expert i
        net.layers[0].weight.copy_(torch.eye(3))
        net.layers[0].bias.zero_()
        net.layers[3].weight.copy_(torch.eye(3))
        net.layers[3].bias.zero_()
    return Router(_KeywordFeat(), net, ["a", "b", "c"], PolicyConfig())


@pytest.fixture(scope="module")
def gateway(tiny):
    from transformers import AutoTokenizer

    args = AppArgs(
        base_model=str(tiny["base"]),
        adapter_roots=[str(tiny["roots"])],
        groups=[{"name": "g1", "adapters": ["a", "b"]}, {"name": "g2", "adapters": ["c"]}],
        routing={"confidence_floor": 0.6},
        limits={"max_prompt_chars": 200, "max_tokens_limit": 32, "default_max_tokens": 8},
    )
    tok = AutoTokenizer.from_pretrained(tiny["base"])
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}A:"
    return Gateway(args, _router(), tok)


def test_models_lists_base_auto_and_every_adapter(gateway):
    ids = [m["id"] for m in gateway.models()["data"]]
    assert ids == ["base", "auto", "a", "b", "c"]
    assert {m["id"]: m["group"] for m in gateway.models()["data"]}["c"] == "g2"


def test_plans(gateway):
    p = gateway.plan_completion(CompletionRequest(model="c", prompt="hi"))
    assert (p.group, p.payload["composition"], p.primary_adapter, p.payload["sampling"]["max_tokens"]) == (
        "g2",
        "c",
        "c",
        8,
    )
    assert p.routing == {"mode": "single", "weights": {"c": 1.0}, "group": "g2", "confidence": None}
    p = gateway.plan_completion(
        CompletionRequest(
            model="base", prompt="hi", composition={"mode": "blend", "weights": {"c": 0.2, "a": 0.3, "b": 0.5}}
        )
    )
    assert p.group == "g1" and p.routing["weights"] == {"c": 0.2, "a": 0.3, "b": 0.5}
    p = gateway.plan_completion(CompletionRequest(model="auto", prompt="this is about gamma"))
    assert p.group == "g2" and p.routing["mode"] == "auto" and p.routing["confidence"] > 0.9
    assert p.payload["composition"] == {"mode": "moe", "top_k": 1, "weights": {"c": 1.0}}
    p = gateway.plan_completion(CompletionRequest(model="auto", prompt="no keyword at all"))
    # The default fallback: the top adapter alone, flagged (two adapters' answer formats do not blend).
    assert (
        p.routing["mode"] == "auto:fallback_top1" and p.routing["confidence"] < 0.6 and len(p.routing["weights"]) == 1
    )
    p = gateway.plan_completion(
        CompletionRequest(
            model="base", prompt="x", composition={"mode": "blend", "weights": {"a": 0.5, "b": 0.5}, "space": "logits"}
        )
    )
    assert p.routing["weights"] == {"a": 0.5, "b": 0.5}


def test_chat_uses_the_chat_template_as_token_ids(gateway):
    p = gateway.plan_chat(ChatCompletionRequest(model="a", messages=[{"role": "user", "content": "hello"}]))
    assert gateway.tokenizer.decode(p.payload["prompt"]) == "hello\nA:"


def test_explain(gateway):
    out = gateway.explain(RouteRequest(prompt="beta things"))
    assert out["routing"]["group"] == "g1" and out["composition"]["weights"] == {"b": 1.0}
    assert set(out["routing"]["probs"]) == {"a", "b", "c"}


CASES = [
    (
        "unknown model",
        dict(model="zz", prompt="x"),
        UnknownAdapterError,
        r"unknown adapter 'zz'; available adapters: \['a', 'auto', 'b', 'base', 'c'\]",
    ),
    (
        "unknown adapter in composition",
        dict(model="base", prompt="x", composition={"mode": "stack", "adapters": ["a", "q"]}),
        UnknownAdapterError,
        "unknown adapter 'q'",
    ),
    ("bad composition", dict(model="base", prompt="x", composition={"mode": "nope"}), CompositionError, "valid modes"),
    (
        "max_tokens over limit",
        dict(model="a", prompt="x", max_tokens=64),
        RequestError,
        "max_tokens 64 exceeds this server's limit of 32",
    ),
    ("prompt too long", dict(model="a", prompt="x" * 201), RequestError, "prompt has 201 characters; the limit is 200"),
    ("bad temperature", dict(model="a", prompt="x", temperature=-1), SamplingError, "temperature must be in"),
    ("auto on token ids", dict(model="auto", prompt=[1, 2]), RequestError, "routes on text"),
    (
        "router-weighted moe on token ids",
        dict(model="auto", prompt=[1, 2], composition={"mode": "moe", "top_k": 2}),
        RequestError,
        "routes on text",
    ),
    ("n out of range", dict(model="a", prompt="x", n=20), SamplingError, r"n must be an integer in \[1, 8\]"),
    ("streamed n=2", dict(model="a", prompt="x", n=2, stream=True), RequestError, "streaming supports n=1"),
    ("logit_bias on words", dict(model="a", prompt="x", logit_bias={"yes": 5}), RequestError, "must be token ids"),
    (
        "min_tokens over max_tokens",
        dict(model="a", prompt="x", min_tokens=9, max_tokens=4),
        SamplingError,
        r"min_tokens \(9\) must be <= max_tokens \(4\)",
    ),
]


@pytest.mark.parametrize("name,body,exc,match", CASES, ids=[c[0] for c in CASES])
def test_gateway_errors(gateway, name, body, exc, match):
    with pytest.raises(exc, match=match):
        gateway.plan_completion(CompletionRequest(**body))


BODY_CASES = [
    ("unknown field", dict(model="a", prompt="x", bestof=3), "Extra inputs are not permitted"),
    ("json_schema without a schema", dict(model="a", prompt="x", response_format={"type": "json_schema"}), "only then"),
    ("unknown response format", dict(model="a", prompt="x", response_format={"type": "yaml"}), "json_object"),
]


@pytest.mark.parametrize("name,body,match", BODY_CASES, ids=[c[0] for c in BODY_CASES])
def test_request_body_errors(name, body, match):
    with pytest.raises(ValidationError, match=match):
        CompletionRequest(**body)


def test_registry_register_validate_and_remove(engine, tiny, tmp_path):
    import shutil

    from loraplex.experts.adapters.registry import AdapterRegistry, linear_shapes
    from loraplex.experts.errors import AdapterNameError, AdapterValidationError, ConflictError

    managed, imports = tmp_path / "managed", tmp_path / "imports"
    shutil.copytree(tiny["roots"] / "a", managed / "a")
    shutil.copytree(tiny["roots"] / "b", imports / "new")
    shutil.copytree(tiny["roots"] / "c", imports / "broken")
    (imports / "broken" / "adapter_config.json").write_text('{"use_dora": true, "lora_alpha": 4}')
    shapes = linear_shapes(
        str(tiny["base"]), ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    assert shapes == engine.wrapped.module_shapes  # meta-device shapes equal the real model's
    reg = AdapterRegistry(managed, [imports], [managed], shapes, max_rank=16, pinned=["a"])
    out = reg.register("team/new", str(imports / "new"))
    assert out["rank"] == 8 and (managed / "team" / "new" / "adapter_model.safetensors").is_file()
    cases = [
        (lambda: reg.register("team/new", str(imports / "new")), ConflictError, "already exists"),
        (lambda: reg.register("x", str(tiny["roots"] / "a")), AdapterNameError, "outside the allowed import roots"),
        # defect 5: a file inside an import root was reported as "outside the import roots"
        (lambda: reg.register("x", str(imports / "new" / "adapter_config.json")), RequestError, "is not a folder"),
        (lambda: reg.register("../x", str(imports / "new")), AdapterNameError, "invalid adapter name"),
        (lambda: reg.register("y", str(imports / "broken")), AdapterValidationError, "use_dora=true"),
        (lambda: reg.remove("a"), ConflictError, "pinned"),
        (lambda: reg.remove("nope"), UnknownAdapterError, "unknown adapter 'nope'"),
    ]
    for fn, exc, match in cases:
        with pytest.raises(exc, match=match):
            fn()
    assert not (managed / "y").exists()
    # a replica's store sees the registration, then the removal, even with the adapter cached
    from loraplex.experts.adapters.store import AdapterStore

    class Slots:
        num_slots = 2

        def write_slot(self, *a):
            pass

    store = AdapterStore([managed], shapes, Slots(), max_rank=16, host_capacity=4)
    assert store.acquire(["team/new"]) == {"team/new": 0}
    reg.remove("team/new")
    with pytest.raises(UnknownAdapterError):
        store.get("team/new")


def test_a_router_naming_missing_adapters_refuses_to_start(gateway, tiny):
    net = RouterNet(3, 3, hidden=3, dropout=0.0)
    router = Router(_KeywordFeat(), net, ["a", "ghost", "phantom"], PolicyConfig())
    with pytest.raises(ConfigError, match=r"routes to adapter\(s\) \['ghost', 'phantom'\] that no adapter root holds"):
        Gateway(gateway.args, router, gateway.tokenizer)
    Gateway(
        gateway.args, Router(_KeywordFeat(), net, ["a", "b", "base"], PolicyConfig()), gateway.tokenizer
    )  # base is no adapter


def test_route_explanations_name_the_head_and_the_runners_up(gateway):
    routing = gateway.explain(RouteRequest(prompt="beta things"))["routing"]
    assert routing["head"] == "trained" and routing["weights"] == {"b": 1.0}
    assert {a["adapter"] for a in routing["alternatives"]} == {"a", "c"}  # the two runners-up (a tie here)
    probs = [routing["probs"]["b"]] + [a["prob"] for a in routing["alternatives"]]
    assert probs == sorted(probs, reverse=True)


def test_a_moe_composition_without_weights_takes_the_routers_weights(gateway):
    """Issue 13: `{"mode": "moe", "top_k": 2}` answered 400 "needs field(s) ['weights']"; the README says MoE
    weights come from the router."""
    comp = {"mode": "moe", "top_k": 2}
    assert gateway.uses_router("auto", comp) and gateway.uses_router("a", comp)  # runs off the event loop
    plan = gateway.plan_completion(CompletionRequest(model="auto", prompt="beta and a bit of gamma", composition=comp))
    probs = gateway.router.route(["beta and a bit of gamma"])[0].probs
    assert plan.payload["composition"]["weights"] == probs and set(probs) == {"a", "b", "c"}
    top2 = sorted(probs, key=probs.get, reverse=True)[:2]
    assert set(plan.routing["weights"]) == set(top2) and sum(plan.routing["weights"].values()) == pytest.approx(1)
    given = {"mode": "moe", "top_k": 1, "weights": {"c": 0.9, "a": 0.1}}  # explicit weights are kept as given
    assert gateway.plan_completion(CompletionRequest(model="base", prompt="beta", composition=given)).routing[
        "weights"
    ] == {"c": 1.0}
    no_router = Gateway(gateway.args, None, gateway.tokenizer)
    with pytest.raises(RequestError, match="takes the router's weights, but no router is configured"):
        no_router.plan_completion(CompletionRequest(model="base", prompt="beta", composition=comp))
