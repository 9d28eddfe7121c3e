"""Drain-when-free batching: batches grow with load, never overlap, skip cancelled requests."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from experts.batcher import DrainBatcher


def test_batches_grow_under_load_and_never_overlap():
    active, overlaps, sizes = [0], [0], []
    lock = threading.Lock()

    def run(items):
        with lock:
            active[0] += 1
            overlaps[0] = max(overlaps[0], active[0])
        sizes.append(len(items))
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return [i * 10 for i in items]

    async def main():
        b = DrainBatcher(run, max_batch_size=8)
        return await asyncio.gather(*(b.submit(i) for i in range(20)))

    assert asyncio.run(main()) == [i * 10 for i in range(20)]
    assert overlaps[0] == 1  # one engine call at a time
    assert sizes == [8, 8, 4]  # everything queued drains in full batches


def test_a_lone_request_waits_for_company_when_asked():
    sizes = []

    def run(items):
        sizes.append(len(items))
        return items

    async def main():
        b = DrainBatcher(run, max_batch_size=8, wait_s=0.05)
        first = asyncio.ensure_future(b.submit("a"))
        await asyncio.sleep(0.01)
        await asyncio.gather(first, b.submit("b"))

    asyncio.run(main())
    assert sizes == [2]


def test_errors_reach_every_request_of_the_failed_call_and_the_worker_survives():
    calls = []

    def run(items):
        calls.append(items)
        if "boom" in items:
            raise RuntimeError("engine failed")
        return items

    async def main():
        b = DrainBatcher(run, max_batch_size=4)
        with pytest.raises(RuntimeError, match="engine failed"):
            await b.submit("boom")
        return await b.submit("ok")

    assert asyncio.run(main()) == "ok"


def test_cancelled_queued_requests_are_skipped():
    seen = []

    def run(items):
        seen.extend(items)
        time.sleep(0.05)
        return items

    async def main():
        b = DrainBatcher(run, max_batch_size=8)
        first = asyncio.ensure_future(b.submit("first"))
        await asyncio.sleep(0.01)
        doomed = asyncio.ensure_future(b.submit("doomed"))
        keep = asyncio.ensure_future(b.submit("keep"))
        await asyncio.sleep(0.005)
        doomed.cancel()
        await asyncio.gather(first, keep)

    asyncio.run(main())
    assert seen == ["first", "keep"]
