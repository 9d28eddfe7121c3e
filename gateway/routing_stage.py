"""A bounded, off-event-loop stage for routing decisions in the ingress.

Why: the sentence encoder is CPU-bound (~10 ms a request on 2 cores). Run on the ingress's asyncio
loop it stalls every other request, health checks included; and an unbounded line in front of it
turns overload into tens of seconds of latency for everyone instead of a fast 503. Measured on the
CPU demo at 40 req/s offered: no 503 at all, p99 26-49 s, all of it waiting in the ingress.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from loraplex.experts.errors import CapacityError

T = TypeVar("T")


class RoutingStage:
    """Runs `fn(*args)` on one worker thread; at most `max_waiting` calls may be queued or running."""

    def __init__(self, max_waiting: int):
        if max_waiting < 1:
            raise ValueError(f"max_waiting must be >= 1, got {max_waiting}")
        self.max_waiting = max_waiting
        self.waiting = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="loraplex-router")

    async def run(self, fn: Callable[..., T], *args) -> T:
        if self.waiting >= self.max_waiting:
            raise CapacityError(
                f"the router has {self.waiting} requests waiting (limits.max_routing_queue={self.max_waiting}); retry "
                "shortly"
            )
        self.waiting += 1  # only touched on the event loop thread: no lock needed
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self.waiting -= 1
