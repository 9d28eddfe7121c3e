"""Routing examples end to end without Serve: the file format and its errors, registration writes them, every
gateway ("replica") on the same roots routes to a new adapter at once, removal takes it out, traffic learning."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from loraplex.config.app import AppArgs
from loraplex.experts.adapters import routing_examples
from loraplex.experts.adapters.index import AdapterIndex, journal_stamp
from loraplex.experts.adapters.registry import AdapterRegistry, linear_shapes
from loraplex.experts.errors import RequestError
from loraplex.gateway.planner import Gateway
from loraplex.gateway.protocol import CompletionRequest, RouteRequest
from loraplex.router.network import RouterNet
from loraplex.router.policy import PolicyConfig
from loraplex.router.router import Router

WORDS = ("alpha", "beta", "gamma", "delta")


class KeywordFeat:
    dim = len(WORDS)

    def __init__(self):
        self.calls = 0

    def encode(self, texts):
        self.calls += len(texts)
        return torch.tensor([[5.0 * (w in t) + 0.01 for w in WORDS] for t in texts])

    def spec(self):
        return {"kind": "sentence", "path": "unused"}


def keyword_router() -> Router:
    """Trained on a, b, c (keyword i -> expert i); knows nothing of `delta`."""
    net = RouterNet(len(WORDS), 3, hidden=3, dropout=0.0)
    with torch.no_grad():
        net.layers[0].weight.copy_(torch.eye(3, len(WORDS)))
        net.layers[0].bias.zero_()
        net.layers[3].weight.copy_(2 * torch.eye(3))
        net.layers[3].bias.zero_()
    return Router(KeywordFeat(), net, ["a", "b", "c"], PolicyConfig())


EXAMPLE_CASES = [
    ("not a list", "delta", "must be a list of prompt strings"),
    ("empty prompt", ["ok", "  "], r"routing_examples\[1\]: must be a non-empty string"),
    ("not a string", ["ok", 3], r"routing_examples\[1\]: must be a non-empty string, got 3"),
    ("too long", ["x" * (routing_examples.MAX_CHARS + 1)], "characters; the limit is"),
    ("too many", [f"p{i}" for i in range(routing_examples.MAX_EXAMPLES + 1)], "the limit is 256"),
]


@pytest.mark.parametrize("name,value,match", EXAMPLE_CASES, ids=[c[0] for c in EXAMPLE_CASES])
def test_routing_examples_errors(name, value, match):
    with pytest.raises(RequestError, match=match):
        routing_examples.check_examples(value)


def test_routing_examples_file_round_trip_and_bad_lines(tmp_path):
    routing_examples.write_examples(tmp_path, ["one", "two", "one"])
    assert routing_examples.read_examples(tmp_path) == ["one", "two"]  # exact repeats dropped
    (tmp_path / routing_examples.FILE).write_text('"bare string ok"\n\n{"prompt": 5}\nnot json\n')
    with pytest.raises(RequestError, match=r"(?s)line 3: expected .*line 4: not JSON"):
        routing_examples.read_examples(tmp_path)
    assert routing_examples.read_examples(tmp_path / "nowhere") == []


@pytest.fixture
def roots(tiny, tmp_path):
    """A managed root holding a, b, c (what the router was trained on) and an import root with `new`."""
    managed, imports = tmp_path / "managed", tmp_path / "imports"
    for name in ("a", "b", "c"):
        shutil.copytree(tiny["roots"] / name, managed / name)
    shutil.copytree(tiny["roots"] / "b", imports / "new")
    shapes = linear_shapes(
        str(tiny["base"]), ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    registry = AdapterRegistry(managed, [imports], [managed], shapes, max_rank=16)
    return {"managed": managed, "imports": imports, "registry": registry, "base": tiny["base"]}


def gateway(roots, **routing) -> Gateway:
    args = AppArgs(
        base_model=str(roots["base"]),
        adapter_roots=[str(roots["managed"])],
        import_roots=[str(roots["imports"])],
        groups=[{"name": "g", "adapters": ["a", "b", "c"]}],
        routing=routing,
    )
    index = AdapterIndex(args.adapter_roots, roots["managed"], scan_interval_s=None)  # no background scans
    return Gateway(args, keyword_router(), index=index)  # only the registry's journal can refresh it


def routed(gw: Gateway, prompt: str) -> dict:
    return gw.explain(RouteRequest(prompt=prompt))["routing"]


def test_the_first_listing_scans_even_on_a_machine_up_for_less_than_the_ttl(roots, monkeypatch):
    """time.monotonic() counts from boot: on a fresh machine it is below an hour-long TTL, which once made the
    never-scanned listing look fresh (empty) and every router look like it named missing adapters."""
    from loraplex.gateway import planner

    monkeypatch.setattr(planner.time, "monotonic", lambda: 5.0)
    gw = gateway(roots)
    assert gw.adapters() == ["a", "b", "c"]
    gw.invalidate()
    assert gw.adapters() == ["a", "b", "c"]


def test_register_with_examples_routes_on_every_replica_at_once_and_removal_takes_it_out(roots):
    one, two = gateway(roots), gateway(roots)  # two ingress replicas on the same roots
    assert routed(two, "delta things")["weights"] != {"delta": 1.0}
    stamp = journal_stamp(roots["managed"])
    out = roots["registry"].register("team/delta", str(roots["imports"] / "new"), ["delta one", "delta two"])
    assert out["routing_examples"] == 2 and journal_stamp(roots["managed"]) != stamp
    assert json.loads((roots["managed"] / "team/delta" / routing_examples.FILE).read_text().splitlines()[0]) == {
        "prompt": "delta one"
    }
    one.refresh_routing()  # the replica that took the call embeds before it answers
    for gw in (one, two):  # the other one sees the stamp on its next request, despite its hour-long TTL
        info = routed(gw, "tell me about delta")
        assert info["weights"] == {"team/delta": 1.0} and info["head"] == "prototype"
        assert routed(gw, "alpha please")["weights"] == {"a": 1.0}  # trained classes keep their routes
    assert one.describe_adapter("team/delta")["routing"] == {
        "trained": False,
        "routing_examples": 2,
        "traffic_examples": 0,
    }
    assert one.describe_adapter("a")["routing"]["trained"] is True
    roots["registry"].remove("team/delta")
    for gw in (one, two):
        info = routed(gw, "tell me about delta")
        assert "team/delta" not in info["probs"] and "team/delta" not in info["weights"]


def test_an_adapter_folder_may_ship_its_examples(roots):
    routing_examples.write_examples(roots["imports"] / "new", ["delta shipped"])
    assert roots["registry"].register("shipped", str(roots["imports"] / "new"))["routing_examples"] == 1
    assert (
        roots["registry"].register("given", str(roots["imports"] / "new"), ["delta a", "delta b"])["routing_examples"]
        == 2
    )  # the request's examples win over the shipped file
    with pytest.raises(RequestError, match="must be a non-empty string"):
        roots["registry"].register("bad", str(roots["imports"] / "new"), [""])
    assert not (roots["managed"] / "bad").exists()  # checked before anything is copied


def test_a_removed_trained_adapter_leaves_routing(roots):
    gw = gateway(roots)
    assert routed(gw, "gamma")["weights"] == {"c": 1.0}
    shutil.rmtree(roots["managed"] / "c")  # gone from the roots (pinned or not, it cannot be served)
    gw.index.refresh()  # what the index's background scan does every adapter_scan_interval_s
    info = routed(gw, "gamma")
    assert "c" not in info["probs"] and set(info["weights"]) <= {"a", "b"}


def test_examples_are_embedded_once_per_file_version(roots):
    gw = gateway(roots)
    roots["registry"].register("d", str(roots["imports"] / "new"), ["delta one"])
    feat = gw.router.featurizer
    routed(gw, "delta")
    calls = feat.calls
    for _ in range(3):
        routed(gw, "delta")
    assert feat.calls == calls + 3  # the three requests only: the examples were not embedded again


def test_learning_from_traffic_makes_an_addressed_adapter_routable(roots):
    shutil.copytree(roots["imports"] / "new", roots["managed"] / "d")  # on disk, no examples, not in the router
    off = gateway(roots)
    plan = off.plan_completion(CompletionRequest(model="d", prompt="delta x"))
    assert plan.learn_text is None and not off.learn("d", "delta x")  # off by default
    gw = gateway(roots, learn_from_traffic=True, traffic_examples_per_adapter=4, traffic_min_examples=3)
    assert gw.plan_completion(CompletionRequest(model="d", prompt="delta x")).learn_text == "delta x"
    assert gw.plan_completion(CompletionRequest(model="auto", prompt="delta x")).learn_text is None
    for i in range(2):
        assert gw.learn("d", f"delta request {i}")
    assert "d" not in routed(gw, "delta")["weights"]  # 2 < traffic_min_examples
    for i in range(10):
        gw.learn("d", f"delta request {i}")
    assert routed(gw, "delta")["weights"] == {"d": 1.0}
    assert gw.examples.counts()["d"] == {"registered": 0, "traffic": 4}  # bounded by the reservoir
    assert gw.describe_adapter("d")["routing"]["traffic_examples"] == 4
    assert not gw.learn("ghost", "delta")  # not an adapter: nothing stored


def test_evaluate_reports_served_accuracy_per_adapter_heads_and_the_oracle():
    from loraplex.router.dataset import RoutingData
    from loraplex.router.evaluation import evaluate
    from loraplex.router.prototypes import ExampleBank

    router = keyword_router()
    texts = ["alpha 1", "alpha 2", "beta 1", "gamma 1", "gamma 2", "delta 1"]
    labels = ["a", "a", "b", "b", "c", "d"]  # "gamma 1" is labelled b: the router sends it to c
    names = ["a", "b", "c", "d"]
    data = RoutingData(
        texts, torch.nn.functional.one_hot(torch.tensor([names.index(x) for x in labels]), 4).float(), names
    )
    before = evaluate(router, data, latency_n=2)
    assert before["served_top1_accuracy"] == round(4 / 6, 4) and before["per_adapter_accuracy"]["d"] == 0.0
    head = router.prototype_head(ExampleBank({"d": router.featurizer.encode(["delta x", "delta y"])}))

    def generate(prompts, compositions):  # a fake engine: answers with the adapter it ran (the top weight)
        return [c if isinstance(c, str) else max(c["weights"], key=c["weights"].get) for c in compositions]

    rep = evaluate(router, data, head, latency_n=2, answers=labels, generate=generate)
    assert rep["served_top1_accuracy"] == round(5 / 6, 4) and rep["accuracy"] == round(5 / 6, 4)
    assert rep["per_adapter_accuracy"] == {"a": 1.0, "b": 0.5, "c": 1.0, "d": 1.0}
    assert rep["head_share"] == {"trained": round(5 / 6, 4), "prototype": round(1 / 6, 4)}
    assert rep["latency_ms_batch1"]["n"] == 1 and rep["latency_ms_batch1"]["p50"] > 0  # 6 prompts - 5 warm-up
    assert rep["answers"] == {"n": 6, "oracle_exact_match": 1.0, "routed_exact_match": round(5 / 6, 4)}
