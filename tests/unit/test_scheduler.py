"""Continuous batching: requests join a running batch between decode steps and decode exactly as they would alone."""

from __future__ import annotations

import threading

import pytest
import torch

from loraplex.config.engine import EngineConfig
from loraplex.experts.engine import Engine, Request
from loraplex.experts.scheduler import Scheduler
from tests.unit.conftest import peft_model

PROMPTS = [
    "my order ORD-12345 never arrived",
    "reset my password please",
    "great service, thank you",
    "the invoice was charged twice, refund me",
]


def _req(prompt, comp=None, **kw):
    kw.setdefault("max_tokens", 8)
    return Request.from_json(prompt, comp, **kw)


class Collect:
    def __init__(self):
        self.results: dict[str, object] = {}

    def __call__(self, name):
        return lambda res: self.results.__setitem__(name, res)


def _drain(s: Scheduler, steps: int | None = None) -> None:
    n = 0
    while s.busy and (steps is None or n < steps):
        if not s.runnable:
            s.wait_for_loads()  # only cold adapters left: their loads run on the store's loader thread
        s.step()
        n += 1


@pytest.fixture(autouse=True)
def _warm(engine):
    """Adapters in host memory: these tests are about rows and slots; cold loads are test_adapter_tiers'."""
    for name in ("a", "b", "c"):
        engine.store.get(name)


def _solo(engine, req):
    return engine.generate([req])[0]


def test_rows_joining_mid_decode_equal_their_solo_runs_and_peft(engine, tiny):
    """Joiners with longer and shorter prompts than the running rows (both padding directions), every mode."""
    reqs = {
        "first": _req(PROMPTS[1], "a", max_tokens=12),
        "longer": _req(PROMPTS[3] + " " + PROMPTS[0], "b", max_tokens=6),
        "shorter_logits_blend": _req(
            "hi", {"mode": "blend", "weights": {"a": 0.5, "c": 0.7}, "space": "logits"}, max_tokens=7
        ),
        "stack": _req(PROMPTS[2], {"mode": "stack", "adapters": ["a", "c"]}, max_tokens=5),
        "chain": _req(
            PROMPTS[0],
            {"mode": "chain", "stages": [{"adapter": "c", "prompt": "{input}"}, {"prompt": "{previous}"}]},
            max_tokens=4,
        ),
        "base": _req(PROMPTS[0], None, max_tokens=9),
    }
    got = Collect()
    s = Scheduler(engine, max_requests=16)
    s.add(reqs["first"], got("first"))
    _drain(s, 3)
    s.add(reqs["longer"], got("longer"))
    s.add(reqs["shorter_logits_blend"], got("shorter_logits_blend"))
    s.step()
    assert s.running == 3 and len(s.decoder) == 3  # joined the running batch, not queued behind it
    _drain(s, 2)
    for name in ("stack", "chain", "base"):
        s.add(reqs[name], got(name))
    _drain(s)
    for name, req in reqs.items():
        assert got.results[name].text == _solo(engine, req).text, name
        assert got.results[name].completion_tokens == req.params.max_tokens or name == "chain"

    ref, tok = peft_model(tiny), engine.tokenizer
    enc = tok([reqs["longer"].prompt], return_tensors="pt")
    with torch.inference_mode():
        want = ref.generate(**enc, adapter_names=["b"], max_new_tokens=6, do_sample=False, eos_token_id=None)[
            0, enc["input_ids"].shape[1] :
        ]
    assert got.results["longer"].text == tok.decode(want, skip_special_tokens=True)


def test_leased_slots_are_never_evicted_and_the_queue_is_fifo(tiny):
    engine = Engine.from_config(
        EngineConfig(
            base_model=str(tiny["base"]),
            adapter_roots=[str(tiny["roots"])],
            max_slots=2,
            max_host_adapters=4,
            max_rank=16,
        )
    )
    for name in ("a", "b", "c"):
        engine.store.get(name)  # in host memory: admission is about slots here, not loads (test_adapter_tiers)
    got = Collect()
    s = Scheduler(engine, max_requests=8)
    reqs = {
        "a": _req(PROMPTS[0], "a", max_tokens=4),
        "b": _req(PROMPTS[1], "b", max_tokens=10),
        "c": _req(PROMPTS[2], "c", max_tokens=3),
        "a2": _req(PROMPTS[3], "a", max_tokens=3),
    }
    for name in ("a", "b", "c", "a2"):
        s.add(reqs[name], got(name))
    s.step()
    assert s.running == 2 and s.waiting == 2  # c needs a third slot; a2 (slot free) does not overtake it
    assert set(engine.store.resident()) == {"a", "b"}
    _drain(s, 4)  # a finishes: its slot is free, c joins while b still decodes
    assert "a" in got.results and s.running >= 2 and "c" in engine.store.resident() and "b" in engine.store.resident()
    _drain(s)
    for name, req in reqs.items():
        assert got.results[name].text == _solo(engine, req).text, name


def test_max_requests_caps_the_running_batch(engine):
    got = Collect()
    s = Scheduler(engine, max_requests=2)
    for i in range(5):
        s.add(_req(PROMPTS[i % 4], "a", max_tokens=3), got(i))
    s.step()
    assert (s.running, s.waiting) == (2, 3)
    _drain(s)
    assert sorted(got.results) == list(range(5)) and all(r.completion_tokens == 3 for r in got.results.values())


def test_cancelled_while_queued_or_running(engine):
    got = Collect()
    s = Scheduler(engine, max_requests=1)
    running, queued = threading.Event(), threading.Event()
    s.add(Request.from_json(PROMPTS[0], "a", cancel=running, max_tokens=50), got("running"))
    s.add(Request.from_json(PROMPTS[1], "b", cancel=queued, max_tokens=50), got("queued"))
    s.add(_req(PROMPTS[2], "c", max_tokens=3), got("other"))
    _drain(s, 2)
    running.set()
    queued.set()
    _drain(s)
    assert got.results["running"].finish_reason == "cancelled" and 0 < got.results["running"].completion_tokens < 50
    assert got.results["queued"].finish_reason == "cancelled" and got.results["queued"].completion_tokens == 0
    assert got.results["other"].completion_tokens == 3


CASES = [
    ("unknown adapter", lambda: _req("x", "nope"), "nope"),
    ("prompt over the context", lambda: _req("x " * 300, "a"), "exceeds the model's context"),
    ("token id out of vocabulary", lambda: Request.from_json([10**6], None, max_tokens=2), "token ids"),
]


@pytest.mark.parametrize("name,make,match", CASES, ids=[c[0] for c in CASES])
def test_invalid_requests_fail_at_add_without_touching_the_batch(engine, name, make, match):
    got = Collect()
    s = Scheduler(engine, max_requests=4)
    s.add(make(), got("bad"))
    assert match in str(got.results["bad"]) and not s.busy


def test_fail_all_answers_everyone_and_the_next_batch_starts_clean(engine):
    got = Collect()
    s = Scheduler(engine, max_requests=1)
    s.add(_req(PROMPTS[0], "a"), got(0))
    s.add(_req(PROMPTS[1], "b"), got(1))
    s.step()
    s.fail_all(RuntimeError("device lost"))
    assert [str(got.results[i]) for i in (0, 1)] == ["device lost"] * 2 and not s.busy
    s.add(_req(PROMPTS[2], "c", max_tokens=4), got(2))
    _drain(s)
    assert got.results[2].text == _solo(engine, _req(PROMPTS[2], "c", max_tokens=4)).text


def test_a_cache_that_cannot_take_rows_mid_batch_falls_back_to_static_batches(engine):
    got = Collect()
    s = Scheduler(engine, max_requests=8)
    s.add(_req(PROMPTS[0], "a", max_tokens=5), got("first"))
    s.step()
    s.decoder.can_join = False  # as for a sliding-window cache layer
    s.add(_req(PROMPTS[1], "b", max_tokens=3), got("second"))
    s.step()
    assert (s.running, s.waiting) == (1, 1)
    _drain(s)
    assert got.results["second"].text == _solo(engine, _req(PROMPTS[1], "b", max_tokens=3)).text


def test_timing_splits_queue_first_token_and_gaps(engine):
    """One row at a time: the second request waits for the first (queue time), then decodes; the times add up."""
    s = Scheduler(engine, max_requests=1)
    got = Collect()
    s.add(_req(PROMPTS[0], "a", max_tokens=6, ignore_eos=True), got("first"))
    s.add(_req(PROMPTS[1], "b", max_tokens=4, ignore_eos=True), got("second"))
    _drain(s)
    first, second = got.results["first"].timing, got.results["second"].timing
    assert len(first.token_gaps_s) == 5 and len(second.token_gaps_s) == 3
    for t in (first, second):
        assert 0 <= t.queue_s <= t.ttft_s <= t.e2e_s
        assert t.ttft_s + sum(t.token_gaps_s) <= t.e2e_s + 1e-6
        assert t.tpot_s == pytest.approx(sum(t.token_gaps_s) / len(t.token_gaps_s))
    # admitted only after the first one's last token (the two arrived within a millisecond)
    assert second.queue_s >= first.ttft_s + sum(first.token_gaps_s) - 1e-3
