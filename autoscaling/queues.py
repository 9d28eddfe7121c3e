"""Where every request of a simulated run stands (`RequestQueues`): each group's FIFO queue at the router's
handle, and each request's status and finish time.

A request joins its group's queue when it arrives, or is refused when the queue holds more than
`max_queued_per_replica` per ready replica (at least one: `max_queued_requests`); it is dropped once it has
waited `queue_timeout_s` (the request timeout). The replicas take requests from the front (`ReplicaPool.admit`).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from loraplex.autoscaling.replicas import ReplicaPool
from loraplex.autoscaling.simconfig import SimConfig
from loraplex.autoscaling.traffic import Trace

# Request status codes.
QUEUED, DONE, DROP_FULL, DROP_TIMEOUT = 0, 1, 2, 3


class RequestQueues:
    def __init__(self, cfg: SimConfig, trace: Trace, ticks: int):
        self.cfg = cfg
        # Python lists: scalar access in the per-request loops.
        self.arrival, self.group = trace.arrival.tolist(), trace.group.tolist()
        self.adapter, self.tokens = trace.adapter.tolist(), trace.tokens.tolist()
        self.finish = np.full(len(trace.arrival), np.nan)
        self.status = np.zeros(len(trace.arrival), dtype=np.int8)
        # tick_start[k]: first request arriving at or after step k's start.
        self.tick_start = np.searchsorted(trace.arrival, np.arange(ticks + 1) * cfg.dt_s).tolist()
        self.queues: list[deque[int]] = [deque() for _ in range(cfg.groups)]
        self.n_full = self.n_timeout = 0

    def arrive(self, k: int, pool: ReplicaPool) -> None:
        """Arrivals of [now - dt, now) at step `k` join their group's queue, or are refused when it is full."""
        limit_per_replica, status, queues, ready = self.cfg.max_queued_per_replica, self.status, self.queues, pool.ready
        for i in range(self.tick_start[k - 1] if k else 0, self.tick_start[k]):
            g = self.group[i]
            q = queues[g]
            if len(q) >= limit_per_replica * max(1, len(ready[g])):
                status[i] = DROP_FULL
                self.n_full += 1
            else:
                q.append(i)

    def expire(self, g: int, limit: float) -> deque[int]:
        """Drop group `g`'s requests that arrived before `limit` (they waited too long); its queue."""
        q, arrival = self.queues[g], self.arrival
        while q and arrival[q[0]] < limit:
            self.status[q.popleft()] = DROP_TIMEOUT
            self.n_timeout += 1
        return q

    def complete(self, ids: np.ndarray, finish: np.ndarray) -> None:
        self.finish[ids] = finish
        self.status[ids] = DONE

    def lengths(self) -> np.ndarray:
        """Requests waiting per group (the handle side of the group load)."""
        return np.array([len(q) for q in self.queues])

    def waiting(self) -> int:
        return sum(len(q) for q in self.queues)

    def arrived(self, ticks: int) -> int:
        """Arrivals admitted into the system in `ticks` steps (the last step's arrivals join at its start)."""
        return self.tick_start[ticks - 1] if ticks else 0
