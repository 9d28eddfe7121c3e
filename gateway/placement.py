"""Which replica of an expert group takes a request: residency first, unless the adapter is hot.

A cold adapter costs its first request a disk -> host -> slot load; sending the next request for it to the
replica that already holds it avoids the load entirely. But sticking to residency alone pins a hot adapter
to one replica while the others idle (Ray Serve issue #65691 for multiplexing). So:

- an adapter whose share of the group's recent requests exceeds `hot_share` is **hot**: it goes to the
  least-loaded replicas whatever they hold, so it ends up loaded on several replicas and its traffic
  spreads (each replica loads it once, off its engine thread);
- any other adapter prefers replicas holding it in device slots, then in host memory (or loading it, or
  just sent a request for it), then any; within a tier, two random candidates (power of two choices, the
  caller picks the shorter queue);
- residency yields to load: a resident replica with more than `max_imbalance` requests above the
  least-loaded replica drops to the last tier.

Residency comes from each replica's `routing_stats` (what it holds, reported every `stats_period_s`); the
requests routed since then count as "expected" residency so a burst for a cold adapter does not scatter
before the next report. Plain Python: the Serve request router (`deployments/request_router.py`) feeds it;
unit tests drive it directly.
"""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from loraplex.config.app import PlacementConfig

EXPECTED_S = 5.0  # how long a routed request counts as residency before the replica's report shows it


@dataclass(frozen=True)
class ReplicaView:
    id: str
    device: frozenset[str] = frozenset()
    host: frozenset[str] = frozenset()  # host memory, or loading
    queue_len: int | None = None  # requests in flight there (None: unknown, taken as 0)

    @classmethod
    def from_stats(cls, replica_id: str, stats: dict | None, queue_len: int | None) -> ReplicaView:
        stats = stats or {}
        host = frozenset(stats.get("host", ())) | frozenset(stats.get("loading", ()))
        return cls(replica_id, frozenset(stats.get("device", ())), host, queue_len)


@dataclass
class Placement:
    """Knobs as `config.app.PlacementConfig` (its defaults: `Placement.from_config()`)."""

    hot_share: float
    window_s: float
    min_requests: int
    max_imbalance: int
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_config(cls, config: PlacementConfig | None = None, **kw) -> Placement:
        c = config or PlacementConfig()
        return cls(c.hot_share, c.window_s, c.min_requests, c.max_imbalance, **kw)

    def __post_init__(self) -> None:
        self._recent: deque[tuple[float, str | None]] = deque()
        self._counts: Counter[str | None] = Counter()
        self._expected: dict[str, dict[str, float]] = {}  # replica -> {adapter: when a request went there}

    # ---- traffic ------------------------------------------------------------------------------
    def routed(self, adapter: str | None, replica_id: str) -> None:
        """A request went to `replica_id`: count it, and expect the replica to hold its adapter soon."""
        now = self.clock()
        self._recent.append((now, adapter))
        self._counts[adapter] += 1
        self._expire(now)
        if adapter:
            mine = self._expected.setdefault(replica_id, {})
            mine[adapter] = now
            if len(mine) > 256:  # bounded: only recent routes matter
                for a in [a for a, t in mine.items() if now - t >= EXPECTED_S]:
                    del mine[a]

    def share(self, adapter: str | None) -> float:
        self._expire(self.clock())
        total = len(self._recent)
        return self._counts[adapter] / total if total else 0.0

    def is_hot(self, adapter: str | None) -> bool:
        self._expire(self.clock())
        return (
            adapter is not None
            and len(self._recent) >= self.min_requests
            and self._counts[adapter] / len(self._recent) > self.hot_share
        )

    def hot(self) -> list[str]:
        return sorted(a for a in self._counts if self.is_hot(a))

    def _expire(self, now: float) -> None:
        while self._recent and now - self._recent[0][0] > self.window_s:
            _, a = self._recent.popleft()
            self._counts[a] -= 1
            if self._counts[a] <= 0:
                del self._counts[a]

    # ---- ranking ------------------------------------------------------------------------------
    def rank(self, adapter: str | None, replicas: Sequence[ReplicaView]) -> list[list[str]]:
        """Replica ids in preference tiers (best first); the caller tries each tier's shorter queue first."""
        if not replicas:
            return []
        now = self.clock()
        load = {r.id: r.queue_len or 0 for r in replicas}
        least = min(load.values())
        if adapter is None or self.is_hot(adapter):
            ids = [r.id for r in sorted(replicas, key=lambda r: (load[r.id], self.rng.random()))]
            return [t for t in (ids[:2], ids[2:]) if t]  # the two least loaded, then the rest
        device, host, rest, overloaded = [], [], [], []
        for r in replicas:
            expected = now - self._expected.get(r.id, {}).get(adapter, -float("inf")) < EXPECTED_S
            if (adapter in r.device or adapter in r.host or expected) and load[r.id] - least > self.max_imbalance:
                overloaded.append(r.id)
            elif adapter in r.device:
                device.append(r.id)
            elif adapter in r.host or expected:
                host.append(r.id)
            else:
                rest.append(r.id)
        return [self._two(t) for t in (device, host, rest, overloaded) if t]

    def _two(self, tier: list[str]) -> list[str]:
        """Power of two choices inside a tier (all of it when it has two or fewer)."""
        return tier if len(tier) <= 2 else self.rng.sample(tier, 2)
