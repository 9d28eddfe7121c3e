"""Bounded per-adapter reservoirs of prompt embeddings from requests that named their adapter.

A request that says `model: "support/refunds"` is a labelled routing example its client wrote for free.
Each adapter keeps a uniform sample (Vitter's algorithm R) of at most `capacity` of them, as featurizer
*embeddings*: the text is never stored. The sampling decision comes first (`slot`) and only a kept
request is embedded (`put`), so after the reservoir fills, the encoder cost falls as `capacity / n`.
Memory is bounded: `max_adapters * capacity * dim` floats at most (64 x 768 x 4 B = 192 KiB an adapter).
"""

from __future__ import annotations

import random
import threading

import torch

from loraplex.router.prototypes import ExampleBank


class Reservoir:
    def __init__(self, capacity: int, max_adapters: int = 1024, seed: int = 0):
        if capacity < 1 or max_adapters < 1:
            raise ValueError(f"capacity and max_adapters must be >= 1, got {capacity}, {max_adapters}")
        self.capacity, self.max_adapters = capacity, max_adapters
        self._rng = random.Random(seed)
        self._seen: dict[str, int] = {}  # adapter -> requests offered so far
        self._items: dict[str, dict[int, torch.Tensor]] = {}  # adapter -> slot -> [dim]
        self._lock = threading.Lock()  # slot() runs on the event loop, put() on the routing thread
        self.version = 0  # bumped on every change: the ingress rebuilds its prototype head when it moves

    def slot(self, adapter: str) -> int | None:
        """Where the next request for `adapter` goes in its reservoir, or None (not sampled: skip embedding)."""
        with self._lock:
            if adapter not in self._seen and len(self._seen) >= self.max_adapters:
                return None
            n = self._seen.get(adapter, 0)
            self._seen[adapter] = n + 1
            if n < self.capacity:
                return n
            j = self._rng.randrange(n + 1)
            return j if j < self.capacity else None

    def put(self, adapter: str, slot: int, feature: torch.Tensor) -> None:
        """Store `feature: [dim]` at `slot` (from `slot()`), replacing what was there."""
        with self._lock:
            if adapter not in self._seen:  # forgotten (removed) between slot() and put()
                return
            self._items.setdefault(adapter, {})[slot] = feature.detach().float().flatten()
            self.version += 1

    def forget(self, adapter: str) -> None:
        """Drop an adapter's samples (it was removed)."""
        with self._lock:
            if self._seen.pop(adapter, None) is not None:
                self._items.pop(adapter, None)
                self.version += 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {a: len(items) for a, items in self._items.items()}

    def seen(self) -> dict[str, int]:
        with self._lock:
            return dict(self._seen)

    def bank(self, min_examples: int = 1) -> ExampleBank:
        """The adapters with at least `min_examples` samples, as an `ExampleBank`."""
        with self._lock:
            return ExampleBank(
                {a: torch.stack(list(items.values())) for a, items in self._items.items() if len(items) >= min_examples}
            )
