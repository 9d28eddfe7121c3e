"""Composed (cat) adapters against PEFT's add_weighted_adapter(combination_type="cat"), and their cache."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from loraplex.experts.adapters.composed import (
    ComposedAdapterCache,
    compose,
    composition_key,
    write_peft,
)
from loraplex.experts.adapters.loader import load_adapter
from loraplex.experts.errors import CompositionError
from tests.unit.conftest import peft_model

ATOL = 1e-5


def _shapes(tiny) -> dict[str, tuple[int, int]]:
    base = AutoModelForCausalLM.from_pretrained(tiny["base"])
    return {
        name: (m.in_features, m.out_features)
        for name, m in base.named_modules()
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1].endswith("_proj")
    }


@pytest.fixture(scope="module")
def loaded(tiny):
    shapes = _shapes(tiny)
    return {n: load_adapter(n, tiny["roots"] / n, shapes, max_rank=16, allow_pickle=False) for n in ("a", "b", "c")}


# weights: a stack (1, 1), a delta blend, and a 3-way MoE mix; "a" first so PEFT's new config keeps scale 1
MIXES = [
    ("stack", {"a": 1.0, "c": 1.0}),
    ("blend", {"a": 0.7, "b": 0.3}),
    ("moe3", {"a": 0.5, "b": 0.25, "c": 0.25}),
]


@pytest.mark.parametrize("name,weights", MIXES, ids=[m[0] for m in MIXES])
def test_delta_equals_peft_cat(tiny, loaded, name, weights):
    composed = compose(loaded, weights, max_rank=32)
    assert composed.rank == sum(loaded[n].rank for n in weights)
    model = peft_model(tiny)
    model.add_weighted_adapter(list(weights), list(weights.values()), "cat", combination_type="cat")
    checked = 0
    for module, layer in model.base_model.model.named_modules():
        if hasattr(layer, "lora_A") and "cat" in layer.lora_A:
            ours = composed.modules[module][1] @ composed.modules[module][0]  # [out, in]
            torch.testing.assert_close(layer.get_delta_weight("cat"), ours, atol=ATOL, rtol=0)
            checked += 1
    assert checked == len(composed.modules) > 0


@pytest.mark.parametrize("name,weights", MIXES, ids=[m[0] for m in MIXES])
def test_written_folder_loads_in_peft_and_gives_the_mix(tiny, loaded, tmp_path, name, weights):
    folder = write_peft(compose(loaded, weights, max_rank=32), tmp_path / "mix", base_model=str(tiny["base"]))
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    ref = peft_model(tiny)
    ref.add_weighted_adapter(list(weights), list(weights.values()), "cat", combination_type="cat")
    ref.set_adapter("cat")
    ours = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny["base"]), folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).logits, ref(input_ids=ids).logits, atol=1e-4, rtol=0)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] and not config["use_rslora"]
    made_of = json.loads((folder / "loraplex_composition.json").read_text())
    assert made_of["parts"] == [[n, round(w, 3)] for n, w in sorted(weights.items())]
    # Our own loader reads it back as an ordinary adapter at scale 1.
    back = load_adapter("mix", folder, _shapes(tiny), max_rank=32, allow_pickle=False)
    assert {s for _, _, s in back.modules.values()} == {1.0}


def test_key_is_canonical_and_rounded():
    assert composition_key({"b": 0.3, "a": 0.7}) == composition_key({"a": 0.70001, "b": 0.29999})
    assert composition_key({"a": 0.7, "b": 0.3}) != composition_key({"a": 0.6, "b": 0.4})
    assert composition_key({"a": 1.0, "b": 0.0}) == composition_key({"a": 1.0})


CASES = [
    (
        "rank above the limit",
        lambda L: compose(L, {"a": 1, "b": 1}, max_rank=10),
        r"rank 12 \(a r=4, b r=8\).*max_lora_rank 10",
    ),
    ("not loaded", lambda L: compose(L, {"a": 1, "zz": 1}, max_rank=32), r"cannot compose \['zz'\]: not loaded"),
    ("nothing to compose", lambda L: compose(L, {"a": 0.0}, max_rank=32), "at least one adapter"),
]


@pytest.mark.parametrize("name,call,match", CASES, ids=[c[0] for c in CASES])
def test_errors_are_400_and_name_the_numbers(loaded, name, call, match):
    with pytest.raises(CompositionError, match=match) as e:
        call(loaded)
    assert e.value.status == 400


def test_cache_hits_and_evicts_lru_by_count_and_bytes(loaded, tmp_path):
    evicted = []
    cache = ComposedAdapterCache(tmp_path / "cache", max_count=2, on_evict=evicted.append)
    mixes = [{"a": 0.5, "c": 0.5}, {"a": 0.2, "c": 0.8}, {"a": 0.9, "c": 0.1}]
    builds = []

    def builder(w):
        return lambda: builds.append(w) or compose(loaded, w, max_rank=32)

    def use(c, w):  # one request: lease, then release
        key, path = c.get(w, builder(w))
        c.release(key)
        return key, path

    k0, p0 = use(cache, mixes[0])
    k1, _ = use(cache, mixes[1])
    assert use(cache, {"c": 0.5, "a": 0.5000001})[0] == k0 and len(builds) == 2  # a hit
    k2, _ = use(cache, mixes[2])  # evicts k1, the least recently used
    assert evicted == [k1] and cache.keys() == [k0, k2] and (cache.hits, cache.misses) == (1, 3)
    assert p0.is_dir() and not (tmp_path / "cache" / k1).exists()
    one = compose(loaded, mixes[0], max_rank=32).nbytes()
    small = ComposedAdapterCache(tmp_path / "small", max_count=10, max_bytes=int(one * 1.5))
    use(small, mixes[0])
    use(small, mixes[1])
    assert len(small) == 1 and small.nbytes <= int(one * 1.5)
    with pytest.raises(CompositionError, match="above the cache's max_bytes"):
        ComposedAdapterCache(tmp_path / "tiny", max_bytes=10).get(mixes[0], builder(mixes[0]))


def test_a_leased_composed_adapter_is_never_evicted_or_dropped(loaded, tmp_path):
    """vLLM reads a LoRA's files when its request is scheduled: a folder in use must stay on disk."""
    evicted = []
    cache = ComposedAdapterCache(tmp_path / "cache", max_count=1, on_evict=evicted.append)
    first = {"a": 0.5, "c": 0.5}
    k0, p0 = cache.get(first, lambda: compose(loaded, first, max_rank=32))  # leased, not released
    k1, p1 = cache.get({"a": 1.0}, lambda: compose(loaded, {"a": 1.0}, max_rank=32))
    assert evicted == [] and p0.is_dir() and p1.is_dir() and cache.leased() == 2  # over the bound while leased
    assert cache.drop(k0) is False and p0.is_dir()
    cache.release(k1)
    assert evicted == [k1] and cache.keys() == [k0]  # back within the bound: the unleased one goes
    cache.release(k0)
    assert cache.drop(k0) is True and not p0.exists() and evicted == [k1, k0]


def test_a_tag_keeps_versions_apart(loaded, tmp_path):
    """The engine tags a composition with its parts' versions: new files, new key; the old folder stays."""
    cache = ComposedAdapterCache(tmp_path / "cache")
    w = {"a": 0.5, "c": 0.5}
    k1, p1 = cache.get(w, lambda: compose(loaded, w, max_rank=32), tag="v1")
    k2, p2 = cache.get(w, lambda: compose(loaded, w, max_rank=32), tag="v2")
    assert k1 != k2 and k1.startswith(composition_key(w)) and p1.is_dir() and p2.is_dir()
    assert cache.get(w, lambda: compose(loaded, w, max_rank=32), tag="v1")[0] == k1 and cache.hits == 1
