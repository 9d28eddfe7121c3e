"""Adapters removed or replaced at run time: no stale weights, no slot rewritten under a running row."""

from __future__ import annotations

import shutil

import pytest

from loraplex.config.engine import EngineConfig
from loraplex.experts.engine import Engine, Request
from loraplex.experts.errors import UnknownAdapterError
from loraplex.experts.scheduler import Scheduler

PROMPT = "my order ORD-12345 never arrived"


def _engine(tiny, root, slots=2):
    cfg = EngineConfig(
        base_model=str(tiny["base"]), adapter_roots=[str(root)], max_slots=slots, max_host_adapters=4, max_rank=16
    )
    return Engine.from_config(cfg)


def _root(tiny, tmp_path, **names):
    """A fresh adapter root: {new name: source adapter of `tiny`}."""
    root = tmp_path / "root"
    for new, src in names.items():
        shutil.copytree(tiny["roots"] / src, root / new)
    return root


def _text(engine, comp, max_tokens=10):
    return engine.generate([Request.from_json(PROMPT, comp, max_tokens=max_tokens, ignore_eos=True)])[0].text


def test_reregistering_a_name_with_new_weights_serves_the_new_weights(tiny, tmp_path, engine):
    """Defect 3: the host tier keyed on the name and a device-slot hit skipped the reload: `x` kept old weights."""
    root = _root(tiny, tmp_path, x="a")
    eng = _engine(tiny, root)
    first = _text(eng, "x")
    assert first == _text(engine, "a")  # warm in both tiers now
    shutil.rmtree(root / "x")  # DELETE /v1/adapters/x ...
    with pytest.raises(UnknownAdapterError):
        eng.check(Request.from_json(PROMPT, "x"))
    shutil.copytree(tiny["roots"] / "b", root / "x")  # ... then POST it again with other weights
    again = _text(eng, "x")
    assert again == _text(engine, "b") and again != first
    # replaced in place (no removal seen in between): the new version too
    shutil.rmtree(root / "x")
    shutil.copytree(tiny["roots"] / "c", root / "x")
    assert _text(eng, "x") == _text(engine, "c")
    assert eng.store.stats.device_misses == 3


def test_removing_an_adapter_never_frees_the_slot_a_running_row_reads(tiny, tmp_path, engine):
    """Defect 4: removal dropped the slot map entry while a row decoded from it; the next acquire rewrote the slot."""
    root = _root(tiny, tmp_path, x="a", y="b", z="c")
    eng = _engine(tiny, root, slots=2)
    want = _text(eng, "x", max_tokens=24)
    s = Scheduler(eng, max_requests=4)
    got = {}
    s.add(Request.from_json(PROMPT, "x", max_tokens=24, ignore_eos=True), lambda r: got.__setitem__("x", r))
    for _ in range(3):
        s.step()
    shutil.rmtree(root / "x")  # removed while its row decodes
    with pytest.raises(UnknownAdapterError):
        eng.store.get("x")  # e.g. a new request's replica-affinity warm-up looks it up
    s.add(Request.from_json(PROMPT, "y", max_tokens=4), lambda r: got.__setitem__("y", r))
    s.add(Request.from_json(PROMPT, "z", max_tokens=4), lambda r: got.__setitem__("z", r))
    while s.busy:
        s.step()
    assert got["x"].text == want  # its slot was never rewritten mid-decode
    assert got["y"].text == engine.generate([Request.from_json(PROMPT, "b", max_tokens=4)])[0].text
    assert got["z"].completion_tokens >= 1  # z waited for x's slot, then ran
    assert eng.store.leased() == 0 and "x" not in eng.store.resident()
