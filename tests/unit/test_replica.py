"""The native replica (the engine protocol over our engine): continuous batching across concurrent callers,
typed outcomes per request, a worker thread that survives every failure."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from loraplex.config.engine import EngineConfig
from loraplex.experts.engine import Request
from loraplex.experts.errors import CompositionError, InternalError, RequestError, UnknownAdapterError
from loraplex.experts.replica import NativeReplica
from loraplex.experts.request import Result

PROMPTS = [
    "my order ORD-12345 never arrived",
    "reset my password please",
    "great service, thank you",
    "the invoice was charged twice",
]


def _server(tiny, engine, **kw):
    return NativeReplica(
        EngineConfig(base_model=str(tiny["base"]), adapter_roots=[str(tiny["roots"])]), [], engine=engine, **kw
    )


def _payload(i, **sampling):
    return {"prompt": PROMPTS[i % 4], "composition": "abc"[i % 3], "sampling": {"max_tokens": 6 + i % 5, **sampling}}


def test_concurrent_callers_join_one_running_batch_and_get_their_solo_answers(tiny, engine):
    server = _server(tiny, engine, max_batch_size=8)
    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda i: server.submit(_payload(i)).result(timeout=60), range(12)))
    solo = [
        engine.generate([Request.from_json(p["prompt"], p["composition"], **p["sampling"])])[0]
        for p in map(_payload, range(12))
    ]
    assert [g.text for g in got] == [s.text for s in solo]
    s = server.stats()
    assert s["requests"] == 12 and s["errors"] == 0 and s["inflight"] == 0
    assert s["rows"] > s["batches"]  # some decode steps held several requests
    assert s["rows"] == sum(g.completion_tokens for g in got)  # every row of every step was a real request's token


def test_a_failing_step_answers_everyone_in_flight_and_the_worker_goes_on(tiny, engine, monkeypatch):
    server = _server(tiny, engine)
    real = server.scheduler.decoder.step
    calls = []

    def broken(joining=()):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(joining)

    monkeypatch.setattr(server.scheduler.decoder, "step", broken)
    first = server.submit(_payload(0, max_tokens=20))
    out = first.result(timeout=60)
    assert isinstance(out, InternalError) and "out of memory" in str(out) and out.status == 500
    after = server.submit(_payload(1, max_tokens=3)).result(timeout=60)  # fresh decoder, same worker
    assert after.completion_tokens == 3
    assert server.stats()["errors"] == 1 and server.stats()["inflight"] == 0


def test_cancel_frees_a_running_row(tiny, engine):
    server = _server(tiny, engine)
    seen = threading.Event()
    fut = server.submit(_payload(0, max_tokens=200, ignore_eos=True), on_token=lambda d: seen.set())
    assert seen.wait(30)
    server.cancel(fut)
    out = fut.result(timeout=60)
    assert out.finish_reason == "cancelled" and out.completion_tokens < 200
    assert server.stats()["cancelled"] == 1


def test_one_batch_mixes_good_and_bad_requests(tiny, engine):
    server = NativeReplica(
        EngineConfig(base_model=str(tiny["base"]), adapter_roots=[str(tiny["roots"])]), ["a"], engine=engine
    )
    payloads = [
        {"prompt": "hi", "composition": "a", "sampling": {"max_tokens": 3}},
        {"prompt": "hi", "composition": "zz", "sampling": {"max_tokens": 3}},
        {"prompt": "hi", "composition": {"mode": "blend", "weights": {"a": -1}}, "sampling": {}},
        {"prompt": "hi", "composition": None, "sampling": {"max_tokens": 2, "bogus": 1}},
        {"prompt": "hi", "composition": {"mode": "stack", "adapters": ["a", "b"]}, "sampling": {"max_tokens": 2}},
    ]
    out = [f.result(timeout=60) for f in [server.submit(p) for p in payloads]]
    assert out[0].completion_tokens == 3 and out[4].completion_tokens == 2
    assert isinstance(out[1], UnknownAdapterError) and out[1].status == 404
    assert isinstance(out[2], CompositionError) and out[2].status == 400
    assert isinstance(out[3], RequestError) and "bogus" in str(out[3]) and out[3].status == 400
    s = server.stats()
    assert s["requests"] == 5 and s["errors"] == 3 and s["inflight"] == 0 and s["pending"] == 0
    assert s["batches"] >= 3 and s["tokens"] == 5  # decode steps: the longest request took 3


def _tokenizer_raises(server, monkeypatch):
    real = server.engine.tokenizer

    class Picky:  # what a lone surrogate did to the real tokenizer: a TypeError on the engine thread
        def __call__(self, text, *a, **k):
            if "explode" in text:
                raise TypeError("TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]")
            return real(text, *a, **k)

        def __getattr__(self, name):
            return getattr(real, name)

    monkeypatch.setattr(server.engine, "tokenizer", Picky())


def _fail_lease(server, monkeypatch):
    real = server.engine.lease
    monkeypatch.setattr(
        server.engine,
        "lease",
        lambda names: (_ for _ in ()).throw(RuntimeError("slot copy failed")) if "b" in names else real(names),
    )


def _fail_add(server, monkeypatch):
    real = server.scheduler.add  # a bug in admission bookkeeping, outside every typed check

    def add(req, done):
        if req.prompt == "poison":
            raise KeyError("bookkeeping bug")
        return real(req, done)

    monkeypatch.setattr(server.scheduler, "add", add)


# name, inject, bad payload, expected error class, message fragment
FAILURES = [
    (
        "tokenizer TypeError at check",
        _tokenizer_raises,
        {"prompt": "explode", "composition": "a"},
        InternalError,
        "TypeError",
    ),
    ("adapter lease fails", _fail_lease, {"prompt": "hello", "composition": "b"}, InternalError, "slot copy failed"),
    (
        "bug in admission",
        _fail_add,
        {"prompt": "poison", "composition": "a"},
        InternalError,
        "KeyError: 'bookkeeping bug'",
    ),
]


@pytest.mark.parametrize("name,inject,bad,exc,match", FAILURES, ids=[f[0] for f in FAILURES])
def test_any_exception_on_the_engine_thread_answers_its_request_and_the_thread_keeps_serving(
    tiny, engine, monkeypatch, name, inject, bad, exc, match
):
    """Defect 11: a TypeError in the tokenizer killed the worker thread; the request never got an answer and
    `inflight` grew by one each time."""
    server = _server(tiny, engine)
    inject(server, monkeypatch)
    for _ in range(3):
        out = server.submit({**bad, "sampling": {"max_tokens": 3}}).result(timeout=30)
        assert isinstance(out, exc) and match in str(out), out
        good = server.submit(_payload(0, max_tokens=3)).result(timeout=30)
        assert isinstance(good, Result) and good.completion_tokens == 3
    s = server.stats()
    assert s["inflight"] == 0 and s["errors"] == 3 and s["requests"] == 6
    server.check_health()  # the worker thread is alive


def test_a_lone_surrogate_reaching_the_engine_is_a_400_not_a_dead_worker(tiny, engine):
    server = _server(tiny, engine)
    out = server.submit({"prompt": "\ud800 hi", "composition": "a", "sampling": {"max_tokens": 3}}).result(timeout=30)
    assert isinstance(out, RequestError) and out.status == 400 and "not valid Unicode" in str(out)
    assert server.submit(_payload(1, max_tokens=2)).result(timeout=30).completion_tokens == 2
    assert server.stats()["inflight"] == 0


def test_the_thread_count_is_set_in_the_worker_thread_that_runs_the_model(tiny, engine, monkeypatch):
    """OpenMP's thread count is per thread: set where the replica is built, it never reached the worker."""
    import threading

    seen = []
    monkeypatch.setattr(engine, "bind_threads", lambda: seen.append(threading.current_thread().name))
    server = _server(tiny, engine)
    assert server.submit(_payload(0, max_tokens=2)).result(timeout=60).completion_tokens == 2
    assert seen == ["loraplex-engine"]
