"""What one simulated run measured (`SimResult`): request outcomes, end-to-end latencies and the GPUs each group
held at every step, with the summary and down-sampled series that the comparison JSONs and plots are built from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_CDF_QUANTILES = (
    0.1,
    0.5,
    1,
    2,
    5,
    10,
    15,
    20,
    25,
    30,
    35,
    40,
    45,
    50,
    55,
    60,
    65,
    70,
    75,
    80,
    85,
    90,
    92,
    94,
    95,
    96,
    97,
    98,
    99,
    99.5,
    99.9,
    100,
)


@dataclass
class SimResult:
    policy: str
    seed: int
    dt_s: float
    groups: int
    n_arrived: int
    n_completed: int
    n_dropped_full: int
    n_dropped_timeout: int
    n_in_system_end: int
    replica_hours: float  # GPU-hours held by replicas (starting, serving or draining)
    latency: np.ndarray  # seconds, completed requests, in arrival order
    latency_arrival: np.ndarray  # their arrival times
    replicas: np.ndarray  # (ticks, groups) GPUs held per group at each step
    ready: np.ndarray  # (ticks, groups) replicas serving per group
    replica_starts: int = 0
    adapter_loads: int = 0

    @property
    def n_dropped(self) -> int:
        return self.n_dropped_full + self.n_dropped_timeout

    @property
    def serving_hours(self) -> float:
        """GPU-hours of replicas that were serving (the rest of `replica_hours` is cold starts and drains)."""
        return float(self.ready.sum(dtype=np.int64)) * self.dt_s / 3600.0

    @property
    def drop_rate(self) -> float:
        return self.n_dropped / max(1, self.n_arrived)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latency, q)) if self.latency.size else float("nan")

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    def summary(self) -> dict:
        return {
            "policy": self.policy,
            "seed": self.seed,
            "arrived": self.n_arrived,
            "completed": self.n_completed,
            "dropped": self.n_dropped,
            "dropped_queue_full": self.n_dropped_full,
            "dropped_timeout": self.n_dropped_timeout,
            "in_system_end": self.n_in_system_end,
            "drop_rate": round(self.drop_rate, 6),
            "p50_s": round(self.p50, 3),
            "p90_s": round(self.percentile(90), 3),
            "p99_s": round(self.p99, 3),
            "mean_s": round(float(self.latency.mean()), 3) if self.latency.size else None,
            "replica_hours": round(self.replica_hours, 3),
            "serving_hours": round(self.serving_hours, 3),
            "mean_gpus": round(self.replica_hours / (self.replicas.shape[0] * self.dt_s / 3600), 2),
            "peak_gpus": int(self.replicas.sum(axis=1).max()),
            "replica_starts": self.replica_starts,
            "adapter_loads": self.adapter_loads,
        }

    def to_dict(self, every_s: float = 60.0, window_s: float = 300.0) -> dict:
        """Summary plus down-sampled series (per-window means) and p99 per arrival window."""
        k = max(1, int(round(every_s / self.dt_s)))
        n = self.replicas.shape[0] // k * k
        rep = self.replicas[:n].reshape(-1, k, self.groups).mean(axis=1)
        rdy = self.ready[:n].reshape(-1, k, self.groups).mean(axis=1)
        horizon = self.replicas.shape[0] * self.dt_s
        edges = np.arange(0.0, horizon + window_s, window_s)
        idx = np.digitize(self.latency_arrival, edges) - 1
        p99_t = []
        for w in range(len(edges) - 1):
            lat = self.latency[idx == w]
            p99_t.append(round(float(np.percentile(lat, 99)), 3) if lat.size else None)
        return {
            **self.summary(),
            "series": {
                "every_s": every_s,
                "t_s": [round((i + 0.5) * k * self.dt_s, 1) for i in range(rep.shape[0])],
                "replicas": np.round(rep, 2).tolist(),
                "ready": np.round(rdy, 2).tolist(),
                "total_replicas": np.round(rep.sum(axis=1), 2).tolist(),
            },
            "p99_window": {
                "window_s": window_s,
                "t_s": [round(e + window_s / 2, 1) for e in edges[:-1]],
                "p99_s": p99_t,
            },
            "latency_quantiles": {str(q): round(self.percentile(q), 3) for q in _CDF_QUANTILES},
        }
