"""Drain-when-free batching: one engine call at a time, each taking everything that queued meanwhile.

Why not `@serve.batch` (Ray 2.60): it splits a batch by multiplexed model id (one adapter per call,
the opposite of mixed batches), runs the split parts concurrently, and keeps forming small batches
while the previous one still runs. Here a single worker owns the engine: when it is free it takes
every pending request (up to `max_batch_size`), so batches grow with load and never overlap.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable


class DrainBatcher:
    def __init__(self, run_batch: Callable[[list[Any]], list[Any]], max_batch_size: int, wait_s: float = 0.0):
        self.run_batch = run_batch  # blocking; called in a worker thread
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s  # after an idle period, wait this long for company before running a lone request
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self.batches: list[int] = []  # sizes of recent batches (bounded)

    @property
    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, item: Any) -> Any:
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._loop())
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((item, fut))
        return await fut

    async def _loop(self) -> None:
        queue = self._queue
        while True:
            first = await queue.get()
            if self.wait_s > 0 and queue.qsize() + 1 < self.max_batch_size:
                await asyncio.sleep(self.wait_s)
            batch = [first]
            while len(batch) < self.max_batch_size and not queue.empty():
                batch.append(queue.get_nowait())
            batch = [(item, fut) for item, fut in batch if not fut.done()]  # skip requests cancelled while queued
            if not batch:
                continue
            self.batches = (self.batches + [len(batch)])[-1000:]
            try:
                results = await asyncio.to_thread(self.run_batch, [item for item, _ in batch])
            except Exception as e:  # the engine call failed as a whole: every request of it gets the error
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, fut), res in zip(batch, results):
                if not fut.done():
                    fut.set_result(res)
