"""Overload: bounded queues shed excess load with 503 + Retry-After, accepted requests stay fast, and the
server recovers as soon as the load drops."""

from __future__ import annotations

import concurrent.futures as cf
import time

import httpx
import pytest

from loraplex.demo.data import make_examples
from tests.integration.conftest import PORT, demo_args

pytestmark = pytest.mark.integration


def test_overload_sheds_with_503_and_recovers(server, roots):
    from ray import serve

    from loraplex.deployments.app import build_app

    args = demo_args(*roots)
    g = args["groups"][1]
    g.update({"max_batch_size": 4, "max_ongoing_requests": 4, "max_queued_requests": 2})
    serve.run(build_app(args), name="overload", route_prefix="/overload")
    url = f"http://127.0.0.1:{PORT}/overload/v1/completions"
    prompts = [e.prompt for e in make_examples("entities", 8, seed=11, split="heldout")]

    def one(i: int):
        t0 = time.perf_counter()
        r = httpx.post(
            url,
            json={
                "temperature": 0,
                "model": "entities",
                "prompt": prompts[i % 8],
                "max_tokens": 24,
                "ignore_eos": True,
            },
            timeout=120,
        )
        return r.status_code, r.headers.get("retry-after"), time.perf_counter() - t0

    with cf.ThreadPoolExecutor(48) as pool:
        results = list(pool.map(one, range(96)))
    codes = [c for c, _, _ in results]
    assert set(codes) <= {200, 503}, {c: codes.count(c) for c in set(codes)}
    assert codes.count(503) > 0 and codes.count(200) >= 6
    assert all(ra is not None for c, ra, _ in results if c == 503)  # every rejection says when to come back
    shed = [dt for c, _, dt in results if c == 503]
    assert max(shed) < 5  # rejected fast, not after a long queue
    ok = sorted(dt for c, _, dt in results if c == 200)
    assert ok[-1] < 60  # accepted requests bounded: at most the bounded queue ahead of them
    r = httpx.post(url, json={"temperature": 0, "model": "entities", "prompt": prompts[0], "max_tokens": 8}, timeout=60)
    assert r.status_code == 200  # recovers once the load drops
    serve.delete("overload")
