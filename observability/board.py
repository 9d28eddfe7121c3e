"""The metrics board's state, without Serve: each process (ingress or expert replica) pushes its metrics
exposition and engine stats every second; the board renders them as one exposition, sums `/v1/stats`
over every replica of a group, and says which groups have a live replica (`/health`).

A source that has not pushed for `ttl_s` is gone (a replica that died or scaled down): dropped, so
neither its counters nor its readiness linger.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from loraplex.observability.exposition import merge


@dataclass
class Source:
    role: str  # "ingress" | "expert"
    group: str | None  # the expert group (None for the ingress)
    replica: str
    text: str  # Prometheus exposition
    stats: dict
    seen: float


class Board:
    def __init__(self, ttl_s: float = 10.0, clock=time.monotonic):
        self.ttl_s, self.clock = ttl_s, clock
        self._sources: dict[str, Source] = {}

    def push(self, role: str, group: str | None, replica: str, text: str, stats: dict | None = None) -> None:
        self._sources[replica] = Source(role, group, replica, text, stats or {}, self.clock())

    def drop(self, replica: str) -> None:
        self._sources.pop(replica, None)

    def live(self) -> list[Source]:
        now = self.clock()
        for key in [k for k, s in self._sources.items() if now - s.seen > self.ttl_s]:
            del self._sources[key]
        return sorted(self._sources.values(), key=lambda s: (s.role, s.group or "", s.replica))

    def exposition(self) -> str:
        def labels(s: Source) -> dict[str, str]:
            out = {"role": s.role, "replica": s.replica}
            if s.group is not None:
                out["deployment"] = s.group
            return out

        return merge((labels(s), s.text) for s in self.live())

    def groups(self) -> dict[str, int]:
        """Live expert replicas per group."""
        out: dict[str, int] = {}
        for s in self.live():
            if s.role == "expert" and s.group is not None:
                out[s.group] = out.get(s.group, 0) + 1
        return out

    def stats(self) -> dict[str, dict]:
        """Per group: each live replica's stats, and their numeric fields summed (`total`)."""
        out: dict[str, dict] = {}
        for s in self.live():
            if s.role != "expert" or s.group is None:
                continue
            g = out.setdefault(s.group, {"replicas": {}, "total": {}})
            g["replicas"][s.replica] = s.stats
            for k, v in s.stats.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    g["total"][k] = g["total"].get(k, 0) + v
        for g in out.values():
            g["total"]["replicas"] = len(g["replicas"])
        return out
