"""Named compositions: validation (config and API), resolution as `model`, /v1/models, persistence across
ingress restarts, and the adapter-removal guard."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from loraplex.config.app import AppArgs, NamedComposition
from loraplex.experts.adapters.index import AdapterIndex
from loraplex.experts.adapters.registry import AdapterRegistry, linear_shapes
from loraplex.experts.engine import Request
from loraplex.experts.errors import (
    AdapterNameError,
    CompositionError,
    ConfigError,
    ConflictError,
    RequestError,
    UnknownAdapterError,
    UnknownCompositionError,
)
from loraplex.gateway.planner import Gateway
from loraplex.gateway.protocol import CompletionRequest, CompositionRegistration

BLEND = {"mode": "blend", "weights": {"a": 0.7, "b": 0.3}, "space": "logits"}


@pytest.fixture
def roots(tiny, tmp_path):
    managed, imports = tmp_path / "managed", tmp_path / "imports"
    for name in ("a", "b", "c"):
        shutil.copytree(tiny["roots"] / name, managed / name)
    shutil.copytree(tiny["roots"] / "b", imports / "new")
    return SimpleNamespace(base=tiny["base"], managed=managed, imports=imports)


def gateway(roots, **extra) -> Gateway:
    args = AppArgs(
        base_model=str(roots.base),
        adapter_roots=[str(roots.managed)],
        import_roots=[str(roots.imports)],
        groups=[{"name": "g", "adapters": ["a"], "max_slots": 2, "max_host_adapters": 4}],
        adapter_scan_interval_s=None,
        **extra,
    )
    return Gateway(args, index=AdapterIndex(args.adapter_roots, roots.managed, scan_interval_s=None))


def register(gw: Gateway, name: str, composition: dict, **kw) -> dict:
    return gw.register_composition(CompositionRegistration(name=name, composition=composition, **kw))


CASES = [
    ("unknown adapter", "mix", {"mode": "stack", "adapters": ["a", "zz"]}, UnknownAdapterError, "unknown adapter 'zz'"),
    ("shadows an adapter", "b", {"mode": "single", "adapter": "a"}, ConflictError, "shadows an adapter"),
    ("reserved name", "auto", {"mode": "single", "adapter": "a"}, CompositionError, "reserved"),
    ("unsafe name", "../x", {"mode": "single", "adapter": "a"}, AdapterNameError, "invalid adapter name"),
    ("itself (a cycle)", "loop", {"mode": "stack", "adapters": ["a", "loop"]}, CompositionError, "cannot nest"),
    ("another composition", "outer", {"mode": "single", "adapter": "mix0"}, CompositionError, "cannot nest"),
    ("over max_slots", "wide", {"mode": "stack", "adapters": ["a", "b", "c"]}, CompositionError, "max_slots=2"),
    ("bad weights", "neg", {"mode": "blend", "weights": {"a": -1.0}}, CompositionError, "finite number >= 0"),
    ("taken", "mix0", {"mode": "single", "adapter": "a"}, ConflictError, "already exists"),
    ("in the config", "conf", {"mode": "single", "adapter": "a"}, ConflictError, "defined in the app config"),
]


@pytest.mark.parametrize("name,comp_name,composition,exc,match", CASES, ids=[c[0] for c in CASES])
def test_composition_registration_errors(roots, name, comp_name, composition, exc, match):
    gw = gateway(roots, compositions={"conf": {"composition": {"mode": "single", "adapter": "b"}}})
    register(gw, "mix0", {"mode": "single", "adapter": "a"})
    with pytest.raises(exc, match=match):
        register(gw, comp_name, composition)


def test_rank_limits_of_a_vllm_group(roots):
    """A delta-space blend on a vLLM group is merged into one adapter of the summed rank (a r4 + b r8 = 12)."""
    args = AppArgs(
        base_model=str(roots.base),
        adapter_roots=[str(roots.managed)],
        import_roots=[str(roots.imports)],
        groups=[{"name": "v", "adapters": ["a", "b"], "engine": "vllm", "vllm": {"max_lora_rank": 8}}],
        adapter_scan_interval_s=None,
    )
    gw = Gateway(args, index=AdapterIndex(args.adapter_roots, roots.managed, scan_interval_s=None))
    with pytest.raises(CompositionError, match=r"merges 2 adapters into rank 12 .* vllm.max_lora_rank=8"):
        register(gw, "merged", {"mode": "blend", "weights": {"a": 0.5, "b": 0.5}})


CONFIG_CASES = [
    ("shadows a pinned adapter", {"a": {"composition": {"mode": "single", "adapter": "b"}}}, "shadows an adapter"),
    ("reserved", {"base": {"composition": {"mode": "single", "adapter": "b"}}}, "is reserved"),
    (
        "unknown mode",
        {"x": {"composition": {"mode": "sum", "adapters": ["a"]}}},
        "does not match any of the expected tags",
    ),
]


@pytest.mark.parametrize("name,compositions,match", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_composition_errors(roots, name, compositions, match):
    with pytest.raises(ValueError, match=match):
        gateway(roots, compositions=compositions)


def test_config_compositions_naming_missing_adapters_fail_the_start_listing_each(roots):
    bad = {
        "one": {"composition": {"mode": "single", "adapter": "gone"}},
        "two": {"composition": {"mode": "stack", "adapters": ["a", "also-gone"]}},
    }
    with pytest.raises(ConfigError, match=r"(?s)compositions.one: .*'gone'.*compositions.two: .*'also-gone'"):
        gateway(roots, compositions=bad)


def test_a_named_composition_resolves_exactly_like_the_inline_one(roots, engine):
    gw = gateway(roots)
    register(gw, "team/mix", BLEND, description="70/30")
    named = gw.plan_completion(CompletionRequest(model="team/mix", prompt="hello there", max_tokens=5))
    inline = gw.plan_completion(CompletionRequest(model="a", composition=BLEND, prompt="hello there", max_tokens=5))
    assert named.payload == inline.payload and named.group == inline.group == "g"
    assert named.routing["composition"] == "team/mix" and named.primary_adapter == "a"
    # and so the engine decodes them identically, token for token
    got = [
        engine.generate([Request.from_json("hello there", p.payload["composition"], max_tokens=6)])[0]
        for p in (named, inline)
    ]
    assert got[0].token_ids == got[1].token_ids
    with pytest.raises(RequestError, match="is a named composition; send it without 'composition'"):
        gw.plan_completion(CompletionRequest(model="team/mix", composition=BLEND, prompt="x"))


def test_models_lists_compositions_with_their_definition(roots):
    gw = gateway(roots, compositions={"conf": {"composition": {"mode": "single", "adapter": "b"}}})
    register(gw, "team/mix", BLEND, description="70/30", fit={"heldout_loss": 0.5})
    by_id = {m["id"]: m for m in gw.models()["data"]}
    assert by_id["team/mix"]["composition"] == {
        "definition": BLEND,
        "source": "registered",
        "description": "70/30",
        "fit": {"heldout_loss": 0.5},
    }
    assert by_id["conf"]["composition"]["source"] == "config" and by_id["conf"]["group"] == "g"
    assert {"a", "b", "c", "base"} <= set(by_id)


def test_compositions_persist_across_ingress_restarts_and_replicas(roots):
    one, two = gateway(roots), gateway(roots)
    register(one, "team/mix", BLEND)
    assert two.compositions.get("team/mix") is not None  # the other replica: on its next lookup
    restarted = gateway(roots)
    assert restarted.compositions.get("team/mix").spec() == BLEND
    restarted.remove_composition("team/mix")
    assert one.compositions.get("team/mix") is None
    with pytest.raises(UnknownCompositionError, match="unknown composition 'team/mix'"):
        two.remove_composition("team/mix")


def test_an_adapter_a_composition_uses_cannot_be_removed(roots):
    gw = gateway(roots)
    shapes = linear_shapes(
        str(roots.base), ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    registry = AdapterRegistry(
        roots.managed, [roots.imports], [roots.managed], shapes, 16, in_use=gw.compositions.using
    )
    registry.register("team/new", str(roots.imports / "new"))
    gw.invalidate()
    register(gw, "uses-new", {"mode": "stack", "adapters": ["a", "team/new"]})
    with pytest.raises(ConflictError, match=r"used by composition\(s\) \['uses-new'\]"):
        registry.remove("team/new")
    gw.remove_composition("uses-new")
    assert registry.remove("team/new")["deleted"] is True


def test_run_time_compositions_need_a_managed_root(roots):
    args = AppArgs(
        base_model=str(roots.base), adapter_roots=[str(roots.managed)], groups=[{"name": "g", "adapters": ["a"]}]
    )
    gw = Gateway(args, index=AdapterIndex(args.adapter_roots, None, scan_interval_s=None))
    with pytest.raises(RequestError, match="run-time compositions are off"):
        register(gw, "mix", BLEND)


def test_named_composition_config_round_trips():
    n = NamedComposition(
        composition={"mode": "chain", "stages": [{"adapter": "a", "prompt": "{input}"}, {"prompt": "{previous}"}]}
    )
    assert n.spec() == {"mode": "chain", "stages": [{"adapter": "a", "prompt": "{input}"}, {"prompt": "{previous}"}]}
