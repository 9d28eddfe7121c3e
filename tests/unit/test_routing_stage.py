"""The ingress's routing stage: off the event loop, one at a time, a bounded line, fast rejection."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from loraplex.experts.errors import CapacityError
from loraplex.gateway.routing_stage import RoutingStage


def test_full_line_is_rejected_at_once_and_frees_up_after():
    release = threading.Event()
    calls: list[int] = []

    def slow(i: int) -> int:
        release.wait(5)
        calls.append(i)
        return i * 10

    async def main():
        stage = RoutingStage(max_waiting=2)
        first = [asyncio.ensure_future(stage.run(slow, i)) for i in range(2)]
        await asyncio.sleep(0.05)
        assert stage.waiting == 2
        with pytest.raises(CapacityError, match=r"the router has 2 requests waiting \(limits.max_routing_queue=2\)"):
            await stage.run(slow, 99)
        release.set()
        assert await asyncio.gather(*first) == [0, 10]
        assert stage.waiting == 0
        assert await stage.run(slow, 3) == 30  # capacity is back
        return calls

    assert asyncio.run(main()) == [0, 1, 3]  # one worker thread: calls run in arrival order


def test_event_loop_stays_free_while_the_router_works():
    """The router's work (CPU-bound, blocking) must not stall the event loop: a ticker keeps ticking while it runs.
    Fails when `run` calls the function on the loop thread (defect 10: the old test counted its own 5 sleeps)."""

    def route(seconds: float) -> float:
        time.sleep(seconds)  # blocks whatever thread runs it
        return seconds

    async def main():
        stage = RoutingStage(max_waiting=4)
        ticks: list[float] = []
        stop = asyncio.Event()

        async def ticker():
            while not stop.is_set():
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.01)

        tick_task = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)  # the ticker starts
        t0 = time.perf_counter()
        await stage.run(route, 0.3)
        t1 = time.perf_counter()
        stop.set()
        await tick_task
        return sum(t0 < t < t1 for t in ticks)

    assert asyncio.run(main()) >= 10  # ~30 ticks of 10 ms fit in 0.3 s; a blocked loop gets none


def test_errors_inside_the_router_reach_the_caller_and_release_the_slot():
    def boom():
        raise ValueError("bad text")

    async def main():
        stage = RoutingStage(max_waiting=1)
        with pytest.raises(ValueError, match="bad text"):
            await stage.run(boom)
        return stage.waiting

    assert asyncio.run(main()) == 0
    with pytest.raises(ValueError, match="max_waiting must be >= 1, got 0"):
        RoutingStage(0)
