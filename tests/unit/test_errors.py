"""Error tables: every user-reachable mistake names the bad value and the valid choices."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from loraplex.config.engine import EngineConfig
from loraplex.experts.adapters.store import AdapterStore
from loraplex.experts.composition import parse_composition
from loraplex.experts.engine import Engine, Request
from loraplex.experts.errors import (
    AdapterNameError,
    AdapterValidationError,
    CapacityError,
    CompositionError,
    ConfigError,
    RequestError,
    SamplingError,
    UnknownAdapterError,
)
from loraplex.experts.sampling import SamplingParams

COMPOSITION_CASES = [
    (
        "unknown mode",
        {"mode": "mix"},
        r"unknown composition mode 'mix'; valid modes: \['base', 'single', 'stack', 'blend', 'moe', 'chain'\]",
    ),
    ("not an object", 3, "composition must be an object"),
    ("single without adapter", {"mode": "single"}, r"needs field\(s\) \['adapter'\]"),
    (
        "extra field",
        {"mode": "single", "adapter": "a", "weight": 2},
        r"unknown field\(s\) \['weight'\] for mode 'single'",
    ),
    ("empty stack", {"mode": "stack", "adapters": []}, "non-empty list"),
    ("duplicate stack", {"mode": "stack", "adapters": ["a", "a"]}, r"\['a'\] more than once"),
    ("empty blend", {"mode": "blend", "weights": {}}, "non-empty object"),
    (
        "negative weight",
        {"mode": "blend", "weights": {"a": -0.5}},
        r"blend weights\['a'\] must be a finite number >= 0, got -0.5",
    ),
    ("nan weight", {"mode": "blend", "weights": {"a": float("nan")}}, "finite number"),
    ("all zero", {"mode": "blend", "weights": {"a": 0, "b": 0}}, "at least one positive weight"),
    (
        "bad space",
        {"mode": "blend", "weights": {"a": 1}, "space": "probs"},
        r"unknown blend space 'probs'; valid spaces: \['delta', 'logits'\]",
    ),
    ("moe top_k 0", {"mode": "moe", "top_k": 0, "weights": {"a": 1}}, "top_k must be an integer >= 1, got 0"),
    ("moe without scores", {"mode": "moe", "top_k": 1}, r"needs field\(s\) \['weights'\]"),
    ("chain empty", {"mode": "chain", "stages": []}, "list of 1..8 stages"),
    (
        "chain unknown placeholder",
        {"mode": "chain", "stages": [{"adapter": "a", "prompt": "{query}"}]},
        r"placeholder \{query\}; valid placeholders here: \['\{input\}'\]",
    ),
    (
        "chain previous in first stage",
        {"mode": "chain", "stages": [{"adapter": "a", "prompt": "{previous}"}]},
        "valid placeholders here",
    ),
    (
        "chain attribute access",
        {"mode": "chain", "stages": [{"prompt": "{input}"}, {"prompt": "{input.__class__}"}]},
        r"placeholder \{input.__class__\}",
    ),
    ("chain unbalanced brace", {"mode": "chain", "stages": [{"prompt": "{input"}]}, "not a valid template"),
    (
        "chain stage extra key",
        {"mode": "chain", "stages": [{"prompt": "{input}", "temperature": 1}]},
        "optional 'adapter'",
    ),
]


@pytest.mark.parametrize("name,spec,match", COMPOSITION_CASES, ids=[c[0] for c in COMPOSITION_CASES])
def test_composition_errors(name, spec, match):
    with pytest.raises(CompositionError, match=match):
        parse_composition(spec)


SAMPLING_CASES = [
    (
        "max_tokens 0",
        {"max_tokens": 0},
        "max_tokens must be an integer >= 1 \\(0 only with echo and logprobs\\), got 0",
    ),
    ("negative temperature", {"temperature": -1}, r"temperature must be in \[0, 100\], got -1"),
    ("top_p 0", {"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
    ("top_k negative", {"top_k": -2}, "top_k must be an integer >= 0"),
    ("empty stop", {"stop": [""]}, "stop must be a string or a list"),
    ("seed negative", {"seed": -1}, "seed must be an integer"),
]


@pytest.mark.parametrize("name,kw,match", SAMPLING_CASES, ids=[c[0] for c in SAMPLING_CASES])
def test_sampling_errors(name, kw, match):
    with pytest.raises(SamplingError, match=match):
        SamplingParams(**kw)


def test_sampling_reports_every_problem_at_once():
    with pytest.raises(SamplingError) as e:
        SamplingParams(max_tokens=0, top_p=2.0)
    assert "max_tokens" in str(e.value) and "top_p" in str(e.value)


def test_engine_request_errors(engine):
    with pytest.raises(UnknownAdapterError, match=r"unknown adapter 'zz'; available adapters: \['a', 'b', 'c'\]"):
        engine.check(Request.from_json("hi", {"mode": "stack", "adapters": ["a", "zz"]}))
    with pytest.raises(RequestError, match="exceeds the model's context of 256 tokens"):
        engine.check(Request.from_json("hi " * 300, "a"))
    with pytest.raises(AdapterNameError, match="invalid adapter name '../a'"):
        engine.check(Request.from_json("hi", "../a"))


# ---- adapter store -----------------------------------------------------------------------------
def _copy(tiny, tmp_path, name="a"):
    dst = tmp_path / "root" / name
    shutil.copytree(tiny["roots"] / name, dst)
    return dst


def _store(engine, root, **kw):
    kw.setdefault("max_rank", 16)
    return AdapterStore([root], engine.wrapped.module_shapes, _Slots(2), host_capacity=kw.pop("host_capacity", 3), **kw)


class _Slots:
    """Records slot writes; the real backend (WrappedModel) is covered by the equivalence tests."""

    def __init__(self, n):
        self.num_slots = n
        self.writes = []

    def write_slot(self, slot, modules):
        self.writes.append(slot)


def _edit_config(path, **changes):
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg.update(changes)
    (path / "adapter_config.json").write_text(json.dumps(cfg))


def _edit_weights(path, fn):
    st = load_file(str(path / "adapter_model.safetensors"))
    save_file(fn(st), str(path / "adapter_model.safetensors"))


def _grow_rank(st):
    return {k: torch.cat([v, v], dim=0 if "lora_A" in k else 1) for k, v in st.items()}


def _bad_shape(st):
    k = next(k for k in st if "lora_B" in k)
    return {**st, k: torch.zeros(st[k].shape[0] + 1, st[k].shape[1])}


def _unknown_module(st):
    return {
        **st,
        "base_model.model.model.layers.0.mlp.nonexistent.lora_A.weight": torch.zeros(4, 8),
        "base_model.model.model.layers.0.mlp.nonexistent.lora_B.weight": torch.zeros(8, 4),
    }


VALIDATION_CASES = [
    ("dora", lambda p: _edit_config(p, use_dora=True), r"use_dora=true \(DoRA magnitude vectors\) is not supported"),
    ("not lora", lambda p: _edit_config(p, peft_type="IA3"), "peft_type is 'IA3'; only 'LORA'"),
    ("modules_to_save", lambda p: _edit_config(p, modules_to_save=["lm_head"]), r"modules_to_save=\['lm_head'\]"),
    ("rank above max", lambda p: _edit_weights(p, _grow_rank), "rank 8 exceeds max_rank 6"),
    (
        "shape mismatch",
        lambda p: _edit_weights(p, _bad_shape),
        r"do not fit the base layer \(expected A\(r, 64\) B\(64, r\)\)",
    ),
    (
        "unknown module",
        lambda p: _edit_weights(p, _unknown_module),
        r"model.layers.0.mlp.nonexistent; adaptable layer kinds: \['down_proj'",
    ),
    ("broken json", lambda p: (p / "adapter_config.json").write_text("{"), "adapter_config.json is not valid JSON"),
    (
        "no weights",
        lambda p: (p / "adapter_model.safetensors").unlink(),
        "no weights: neither adapter_model.safetensors",
    ),
    (
        "pickle refused",
        lambda p: (
            torch.save(load_file(str(p / "adapter_model.safetensors")), p / "adapter_model.bin"),
            (p / "adapter_model.safetensors").unlink(),
        ),
        "refusing pickle weights adapter_model.bin",
    ),
    (
        "corrupt safetensors",
        lambda p: (p / "adapter_model.safetensors").write_bytes(b"garbage"),
        "cannot read adapter_model.safetensors",
    ),
]


@pytest.mark.parametrize("name,change,match", VALIDATION_CASES, ids=[c[0] for c in VALIDATION_CASES])
def test_adapter_validation_errors(engine, tiny, tmp_path, name, change, match):
    change(_copy(tiny, tmp_path))
    with pytest.raises(AdapterValidationError, match=match):
        _store(engine, tmp_path / "root", max_rank=6).get("a")


def test_validation_reports_all_problems_at_once(engine, tiny, tmp_path):
    p = _copy(tiny, tmp_path)
    _edit_config(p, use_dora=True, lora_bias=True)
    _edit_weights(p, _bad_shape)
    with pytest.raises(AdapterValidationError) as e:
        _store(engine, tmp_path / "root").get("a")
    assert len(e.value.problems) == 3, e.value.problems


def test_pickle_weights_load_when_allowed(engine, tiny, tmp_path):
    p = _copy(tiny, tmp_path)
    torch.save(load_file(str(p / "adapter_model.safetensors")), p / "adapter_model.bin")
    (p / "adapter_model.safetensors").unlink()
    assert _store(engine, tmp_path / "root", allow_pickle=True).get("a").rank == 4


NAME_CASES = [
    ("parent", "../a", AdapterNameError, "invalid adapter name"),
    ("absolute", "/etc/passwd", AdapterNameError, "no absolute paths"),
    ("dot segment", "x/./a", AdapterNameError, "invalid adapter name"),
    ("empty", "", AdapterNameError, "non-empty string"),
    ("missing", "b", UnknownAdapterError, r"unknown adapter 'b'; available adapters: \['a'\]"),
]


@pytest.mark.parametrize("name,adapter,exc,match", NAME_CASES, ids=[c[0] for c in NAME_CASES])
def test_names_cannot_escape_the_roots(engine, tiny, tmp_path, name, adapter, exc, match):
    _copy(tiny, tmp_path)
    outside = tmp_path / "outside"
    shutil.copytree(tiny["roots"] / "b", outside)
    os.symlink(outside, tmp_path / "root" / "evil")
    store = _store(engine, tmp_path / "root")
    with pytest.raises(exc, match=match):
        store.get(adapter)
    with pytest.raises(AdapterNameError, match="resolves outside its root"):
        store.get("evil")


def test_two_tier_lru_counts_and_never_evicts_for_a_bad_adapter(engine, tiny, tmp_path):
    for n in ("a", "b", "c"):
        _copy(tiny, tmp_path, n)
    shutil.copytree(tiny["roots"] / "a", tmp_path / "root" / "broken")
    _edit_config(tmp_path / "root" / "broken", use_dora=True)
    store = _store(engine, tmp_path / "root", host_capacity=2)
    assert store.acquire(["a", "b"]) == {"a": 0, "b": 1}
    store.acquire(["a"])  # a is now most recent: c must evict b
    assert store.acquire(["c"]) == {"c": 1}
    assert list(store.resident()) == ["a", "c"]
    with pytest.raises(AdapterValidationError):
        store.acquire(["broken"])
    assert list(store.resident()) == ["a", "c"]  # validated before evicting: nothing lost
    with pytest.raises(CapacityError, match="needs 3 distinct adapters but the replica has 2 slots"):
        store.acquire(["a", "b", "c"])
    s = store.stats
    assert (s.device_hits, s.device_misses, s.evictions_device) == (1, 3, 1)
    assert s.host_misses == 4 and s.load_failures == 1 and s.load_seconds > 0
    assert len(store.cached()) <= 2  # host tier bounded


def test_config_errors_are_collected():
    with pytest.raises(ValueError, match="max_host_adapters"):
        EngineConfig(base_model="x", adapter_roots=["y"], max_slots=8, max_host_adapters=2)
    with pytest.raises(ValueError, match="extra"):
        EngineConfig(base_model="x", adapter_roots=["y"], slots=3)


def test_store_config_lists_every_problem(engine, tmp_path):
    with pytest.raises(ConfigError) as e:
        AdapterStore([tmp_path / "nope"], engine.wrapped.module_shapes, _Slots(4), max_rank=8, host_capacity=2)
    assert len(e.value.problems) == 2


def test_capacity_packs_batches_instead_of_failing(tiny):
    """More distinct adapters than slots in one call: the engine splits it into groups, nothing fails."""
    eng = Engine.from_config(
        EngineConfig(
            base_model=str(tiny["base"]),
            adapter_roots=[str(tiny["roots"])],
            max_slots=1,
            max_host_adapters=2,
            max_rank=16,
        )
    )
    out = eng.generate([Request.from_json("hi", n, max_tokens=2) for n in ("a", "b", "c", "a")])
    assert [r.completion_tokens for r in out] == [2, 2, 2, 2]
    # can never fit: a permanent 400 naming the limit, not a 503 "retry later" (defect: it was a CapacityError)
    with pytest.raises(CompositionError, match="uses 2 adapters; this replica has max_slots=1") as e:
        eng.check(Request.from_json("hi", {"mode": "stack", "adapters": ["a", "b"]}))
    assert e.value.status == 400
