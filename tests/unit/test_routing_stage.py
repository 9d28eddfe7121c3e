"""The ingress's routing stage: off the event loop, one at a time, a bounded line, fast rejection."""

from __future__ import annotations

import asyncio
import threading

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
    gate = threading.Event()

    async def main():
        stage = RoutingStage(max_waiting=4)
        busy = asyncio.ensure_future(stage.run(gate.wait, 5))
        ticks = 0
        for _ in range(5):  # the loop keeps running other work while the stage is busy
            await asyncio.sleep(0.01)
            ticks += 1
        gate.set()
        await busy
        return ticks

    assert asyncio.run(main()) == 5


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
