"""Thousands of adapters: the name index, loads off the engine thread (single-flight, failures, parking), hub
references from a pre-populated cache (offline), the size bound, and residency-aware placement."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from loraplex.config.app import AppArgs, PlacementConfig
from loraplex.config.engine import EngineConfig, HubConfig
from loraplex.experts.adapters import store as store_module
from loraplex.experts.adapters.index import AdapterIndex
from loraplex.experts.adapters.registry import AdapterRegistry, linear_shapes
from loraplex.experts.adapters.sources import HubSource
from loraplex.experts.engine import Engine, Request
from loraplex.experts.errors import (
    AdapterNameError,
    AdapterValidationError,
    HubAdapterError,
    PayloadTooLargeError,
    UnknownAdapterError,
)
from loraplex.experts.scheduler import Scheduler
from loraplex.gateway.placement import Placement, ReplicaView
from loraplex.gateway.planner import Gateway
from tests.unit.conftest import HUB_SHA as SHA
from tests.unit.conftest import make_hub_cache, write_json

PROMPT = "my order ORD-12345 never arrived"


def _engine(tiny, roots, **kw) -> Engine:
    cfg = {"max_slots": 2, "max_host_adapters": 4, "max_rank": 16, **kw}
    return Engine.from_config(EngineConfig(base_model=str(tiny["base"]), adapter_roots=[str(r) for r in roots], **cfg))


class GatedLoads:
    """Wraps the store's `load_adapter`: counts calls per adapter and holds gated ones until released."""

    def __init__(self, monkeypatch, gated=()):
        self.calls: dict[str, int] = {}
        self.gates = {n: threading.Event() for n in gated}
        real = store_module.load_adapter

        def load(name, *a, **kw):
            self.calls[name] = self.calls.get(name, 0) + 1
            if name in self.gates:
                assert self.gates[name].wait(30), f"gate of {name} never opened"
            return real(name, *a, **kw)

        monkeypatch.setattr(store_module, "load_adapter", load)


def _collect():
    got: dict[str, object] = {}
    return got, (lambda name: lambda res: got.__setitem__(name, res))


def _drain(s: Scheduler) -> None:
    while s.busy:
        if not s.runnable:
            s.wait_for_loads(10)
        s.step()


# ---- the index ---------------------------------------------------------------------------------------
@pytest.fixture
def managed(tiny, tmp_path):
    managed, imports = tmp_path / "managed", tmp_path / "imports"
    managed.mkdir()
    shutil.copytree(tiny["roots"] / "a", imports / "new")
    shapes = linear_shapes(str(tiny["base"]), ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"])
    return SimpleNamespace(root=managed, registry=AdapterRegistry(managed, [imports], [managed], shapes, 16))


def test_the_index_sees_registration_and_removal_at_once_on_every_replica(managed):
    one, two = (AdapterIndex([managed.root], managed.root, scan_interval_s=None) for _ in range(2))
    assert one.names() == [] and "team/x" not in two
    managed.registry.register("team/x", str(managed.registry.import_roots[0] / "new"))
    assert "team/x" in one and two.names() == ["team/x"]  # no rescan: the journal's stamp moved
    before = two.names()
    assert two.names() is before  # unchanged: the same list object (routing caches compare it cheaply)
    managed.registry.remove("team/x")
    assert "team/x" not in one and two.names() == []
    one.refresh()  # a full scan never brings a removed adapter back, nor lists a registered one twice
    assert one.names() == []


def test_hand_dropped_folders_show_after_a_scan_and_unsafe_ones_never(tiny, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(tiny["roots"] / "a", root / "team" / "a")
    index = AdapterIndex([root], scan_interval_s=None)
    assert index.names() == ["team/a"]
    shutil.copytree(tiny["roots"] / "b", root / "b")
    shutil.copytree(tiny["roots"] / "c", root / ".incoming-123")  # a registration half-way: hidden
    shutil.copytree(tiny["roots"] / "c", tmp_path / "outside")
    os.symlink(tmp_path / "outside", root / "evil")  # leaves the root: never listed
    os.symlink(root / "team" / "a", root / "alias")  # stays inside: listed
    assert index.names() == ["team/a"]  # until the background scan runs
    index.refresh()
    assert index.names() == ["alias", "b", "team/a"]


def test_the_index_background_scan_finds_new_folders(tiny, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    index = AdapterIndex([root], scan_interval_s=0.05)
    shutil.copytree(tiny["roots"] / "a", root / "late")
    for _ in range(200):
        if "late" in index:
            break
        threading.Event().wait(0.02)
    index.close()
    assert "late" in index


def test_unknown_adapter_errors_stay_short_with_thousands_of_adapters():
    names = [f"tenant-{i:04d}/support" for i in range(5000)]
    msg = str(UnknownAdapterError("tenant-0042/suport", names))
    assert "'tenant-0042/support'" in msg and "5000 adapters in all" in msg and len(msg) < 1200
    assert str(UnknownAdapterError("x", ["a", "b"])).endswith("available adapters: ['a', 'b']")


# ---- loads off the engine thread ---------------------------------------------------------------------
def test_concurrent_requests_for_a_cold_adapter_share_one_load(tiny, monkeypatch):
    loads = GatedLoads(monkeypatch, gated=["b"])
    store = _engine(tiny, [tiny["roots"]]).store
    first, second = store.load("b"), store.load("b")
    assert first is second and not first.done() and store.loading() == ["b"]
    loads.gates["b"].set()
    assert first.result(10)[1].name == "b" and loads.calls == {"b": 1}
    assert store.load("b").done() and loads.calls == {"b": 1}  # now a host hit
    assert store.stats.host_joins == 1 and store.stats.host_misses == 1 and store.stats.host_hits == 1


def test_a_cold_adapter_waits_off_the_batch_while_warm_rows_decode(tiny, monkeypatch):
    engine = _engine(tiny, [tiny["roots"]])
    engine.store.get("a")
    loads = GatedLoads(monkeypatch, gated=["b"])
    got, done = _collect()
    s = Scheduler(engine, max_requests=8)
    s.add(Request.from_json(PROMPT, "b", max_tokens=4), done("cold"))
    s.add(Request.from_json(PROMPT, "a", max_tokens=6), done("warm"))
    for _ in range(3):
        s.step()
    # the cold request holds no row and no slot; the warm one overtook it and decodes
    assert (s.running, s.parked, s.waiting) == (1, 1, 0) and "b" not in engine.store.resident()
    loads.gates["b"].set()
    _drain(s)
    assert loads.calls == {"b": 1}
    assert got["cold"].text == engine.generate([Request.from_json(PROMPT, "b", max_tokens=4)])[0].text
    assert got["warm"].text == engine.generate([Request.from_json(PROMPT, "a", max_tokens=6)])[0].text
    assert len(s.load_waits) == 1


def test_a_failed_load_answers_every_waiting_request_and_never_takes_a_slot(tiny, tmp_path, monkeypatch):
    root = tmp_path / "root"
    shutil.copytree(tiny["roots"] / "a", root / "a")
    shutil.copytree(tiny["roots"] / "a", root / "broken")
    write_json(root / "broken" / "adapter_config.json", {"peft_type": "LORA", "use_dora": True, "r": 4})
    engine = _engine(tiny, [root])
    engine.store.acquire(["a"])
    loads = GatedLoads(monkeypatch, gated=["broken"])
    got, done = _collect()
    s = Scheduler(engine, max_requests=8)
    for i in range(3):
        s.add(Request.from_json(PROMPT, "broken", max_tokens=3), done(f"broken{i}"))
    s.add(Request.from_json(PROMPT, "a", max_tokens=3), done("good"))
    s.step()
    assert s.parked == 3 and s.running == 1
    loads.gates["broken"].set()
    _drain(s)
    assert loads.calls == {"broken": 1}  # one load for the three requests
    for i in range(3):
        assert isinstance(got[f"broken{i}"], AdapterValidationError) and "use_dora" in str(got[f"broken{i}"])
    assert got["good"].finish_reason == "length"
    assert set(engine.store.resident()) == {"a"} and engine.store.stats.load_failures == 1


def test_engine_generate_waits_for_cold_loads(tiny):
    engine = _engine(tiny, [tiny["roots"]])
    out = engine.generate([Request.from_json(PROMPT, n, max_tokens=3) for n in ("a", "b", "c")])
    assert all(r.completion_tokens == 3 for r in out)


# ---- hub references from a pre-populated cache, offline ----------------------------------------------
@pytest.fixture
def hub(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hub"
    make_hub_cache(cache, "acme/support-lora", tiny["roots"] / "a")
    return HubConfig(repos=["acme/*"], cache_dir=str(cache))


def test_hub_references_load_offline_from_the_cache_and_decode_like_the_local_adapter(tiny, tmp_path, hub):
    empty = tmp_path / "empty"
    empty.mkdir()
    engine = _engine(tiny, [empty], hub=hub)
    for ref in ("hf://acme/support-lora", "hf://acme/support-lora@main", f"hf://acme/support-lora@{SHA}"):
        got = engine.generate([Request.from_json(PROMPT, ref, max_tokens=6)])[0]
        assert (
            got.text == _engine(tiny, [tiny["roots"]]).generate([Request.from_json(PROMPT, "a", max_tokens=6)])[0].text
        ), ref
    assert engine.store.get("acme/support-lora").name == "acme/support-lora"  # plain org/name: not local, so hub


HUB_CASES = [
    ("repo not allowed", "hf://other/lora", AdapterNameError, r"hub repo 'other/lora' is not allowed.*acme/\*"),
    ("not in the cache, offline", "hf://acme/missing", HubAdapterError, "not in the local Hugging Face cache"),
    ("unknown revision", "hf://acme/support-lora@v9", HubAdapterError, "not in the local Hugging Face cache"),
    ("bad syntax", "hf://acme/../x", AdapterNameError, "invalid hub adapter reference"),
]


@pytest.mark.parametrize("name,ref,exc,match", HUB_CASES, ids=[c[0] for c in HUB_CASES])
def test_hub_reference_errors(tiny, tmp_path, hub, name, ref, exc, match):
    store = _engine(tiny, [tiny["roots"]], hub=hub).store
    with pytest.raises(exc, match=match):
        store.get(ref)


def test_hub_sources_off_refuse_hub_references(tiny):
    with pytest.raises(AdapterNameError, match="hub sources are off; allow repos with hub.repos"):
        _engine(tiny, [tiny["roots"]]).store.get("hf://acme/support-lora")


def test_a_cached_hub_adapter_over_the_size_bound_is_refused_naming_it(tiny, tmp_path, hub):
    small = hub.model_copy(update={"max_adapter_mb": 0.001})
    with pytest.raises(PayloadTooLargeError, match=r"bound is hub.max_adapter_mb=0.001 \(1048 bytes\)"):
        HubSource(small).fetch("hf://acme/support-lora")


def test_the_size_bound_is_checked_from_hub_metadata_before_any_download(tiny, tmp_path, monkeypatch):
    """Online and not cached: the Hub's file metadata says too big, so snapshot_download is never called
    (a fake metadata API stands in for the Hub: no network in tests)."""
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    downloads = []
    real = huggingface_hub.snapshot_download

    def snapshot_download(repo_id, **kw):
        if not kw.get("local_files_only"):
            downloads.append(repo_id)
            raise AssertionError("downloaded despite the bound")
        return real(repo_id, **kw)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    sizes = {"adapter_config.json": 600, "adapter_model.safetensors": 3 * 2**20, "README.md": 10**9}
    info = SimpleNamespace(siblings=[SimpleNamespace(rfilename=f, size=n) for f, n in sizes.items()])
    api = SimpleNamespace(model_info=lambda repo, revision=None, files_metadata=False: info)
    source = HubSource(HubConfig(repos=["acme/*"], cache_dir=str(tmp_path / "c"), max_adapter_mb=2), api)
    with pytest.raises(PayloadTooLargeError, match=r"is 3146328 bytes; the bound is hub.max_adapter_mb=2.0"):
        source.fetch("hf://acme/big")
    assert downloads == []


def test_a_cache_symlink_leaving_the_repo_folder_is_refused(tiny, tmp_path, hub):
    snap = Path(hub.cache_dir) / "models--acme--support-lora" / "snapshots" / SHA
    outside = tmp_path / "outside.safetensors"
    shutil.copy(snap / "adapter_model.safetensors", outside)
    (snap / "adapter_model.safetensors").unlink()
    os.symlink(outside, snap / "adapter_model.safetensors")
    with pytest.raises(AdapterNameError, match="resolves outside its cache folder"):
        HubSource(hub).fetch("hf://acme/support-lora")


def test_the_gateway_accepts_allowed_hub_references_and_names_the_switch_otherwise(tiny):
    def gw(**hub):
        args = AppArgs(
            base_model=str(tiny["base"]),
            adapter_roots=[str(tiny["roots"])],
            groups=[{"name": "g", "adapters": ["a"]}],
            hub=hub,
            adapter_scan_interval_s=None,
        )
        return Gateway(args)

    on = gw(repos=["acme/*"])
    assert on.resolve("hf://acme/x@v1", None, "")[0] == "hf://acme/x@v1"
    assert on.resolve("acme/x", None, "")[0] == "acme/x"
    with pytest.raises(AdapterNameError, match="not allowed"):
        on.resolve("hf://evil/x", None, "")
    with pytest.raises(AdapterNameError, match="hub sources are off"):
        gw().resolve("hf://acme/x", None, "")
    with pytest.raises(UnknownAdapterError):
        gw().resolve("acme/x", None, "")


# ---- placement ---------------------------------------------------------------------------------------
def _replicas(**holdings) -> list[ReplicaView]:
    return [ReplicaView(rid, frozenset(d), frozenset(h), q) for rid, (d, h, q) in holdings.items()]


def test_placement_prefers_device_then_host_residency():
    p = Placement.from_config(PlacementConfig(min_requests=1000))
    views = _replicas(r1=((), (), 0), r2=(("x",), (), 3), r3=((), ("x",), 1), r4=((), (), 0))
    tiers = p.rank("x", views)
    assert tiers[0] == ["r2"] and tiers[1] == ["r3"] and sorted(tiers[2]) == ["r1", "r4"]


def test_placement_residency_yields_to_a_long_queue():
    p = Placement.from_config(PlacementConfig(max_imbalance=4, min_requests=1000))
    tiers = p.rank("x", _replicas(r1=(("x",), (), 9), r2=((), (), 2)))
    assert tiers == [["r2"], ["r1"]]


def test_a_request_routed_counts_as_residency_until_the_replica_reports_it():
    now = [0.0]
    p = Placement.from_config(PlacementConfig(min_requests=1000), clock=lambda: now[0])
    views = _replicas(r1=((), (), 0), r2=((), (), 0))
    p.routed("cold", "r2")
    assert p.rank("cold", views)[0] == ["r2"]  # the burst sticks to the replica loading it
    now[0] = 60.0
    assert len(p.rank("cold", views)) == 1  # forgotten: both replicas are equal again


def test_a_hot_adapter_spreads_to_the_least_loaded_replicas_whatever_they_hold():
    now = [0.0]
    p = Placement.from_config(PlacementConfig(hot_share=0.3, min_requests=10, window_s=10), clock=lambda: now[0])
    for i in range(20):
        p.routed("hot" if i % 2 else f"cold{i}", "r1")
    assert p.is_hot("hot") and not p.is_hot("cold2") and p.hot() == ["hot"]
    views = _replicas(r1=(("hot",), (), 3), r2=((), (), 0), r3=((), (), 1))
    assert p.rank("hot", views)[0] == ["r2", "r3"]  # not r1, though only it holds the adapter
    now[0] = 100.0  # the window passed: nothing is hot any more
    assert not p.is_hot("hot") and p.rank("hot", views)[0] == ["r1"]
