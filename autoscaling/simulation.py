"""Simulation of expert-group autoscaling on a large GPU deployment (`simulate`): plain Python + numpy, seeded,
no Ray. docs/autoscaling.md explains the model and its numbers.

One run puts one policy (`loraplex.autoscaling.control`) in charge of the simulated replicas
(`loraplex.autoscaling.replicas`) under a seeded trace (`loraplex.autoscaling.traffic`), with requests queued
at the router (`loraplex.autoscaling.queues`). It advances in fixed steps of `dt_s` (request-level bookkeeping
with exact arrival and interpolated finish times; a request waits at most `dt_s` for the next admission
point); every step runs, in this order:

1. replica lifecycle: cold starts finish, drains finish, waiting replicas get freed GPUs;
2. the step's arrivals join their group's queue, or are refused when it is full;
3. per group, timeouts, then admission into ready replicas;
4. accounting: GPUs held per group;
5. every `control_interval_s`: sample the load, push metrics, let the policy set targets;
6. service: every busy replica decodes its batch for `dt_s`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from loraplex.autoscaling.control import POLICIES, LoadMetrics, controller, initial_replicas
from loraplex.autoscaling.queues import DONE, RequestQueues
from loraplex.autoscaling.replicas import ReplicaPool
from loraplex.autoscaling.results import SimResult
from loraplex.autoscaling.simconfig import SimConfig
from loraplex.autoscaling.traffic import Trace, make_trace


def n_steps(cfg: SimConfig) -> int:
    """Time steps of one run."""
    return int(round(cfg.horizon_s / cfg.dt_s))


def total_steps(cfg: SimConfig, policies: Sequence[str] = POLICIES) -> int:
    """Steps `compare` reports through `progress` (for a progress bar); a frontier sweep multiplies by its runs."""
    return n_steps(cfg) * len(policies)


def simulate(
    policy: str,
    cfg: SimConfig | None = None,
    seed: int = 0,
    *,
    trace: Trace | None = None,
    progress: Callable[[int], None] | None = None,
) -> SimResult:
    """Run one policy over the seeded trace (or `trace`, the same seed's, to share it between policies);
    `progress(n)` is called with steps done since the last call. An unknown policy raises `ConfigError`."""
    cfg = cfg or SimConfig()
    control = controller(policy, cfg)
    trace = trace if trace is not None else make_trace(cfg, seed)
    G, dt, ticks = cfg.groups, cfg.dt_s, n_steps(cfg)
    ctrl_every = max(1, int(round(cfg.control_interval_s / dt)))

    pool = ReplicaPool(cfg, trace.group_of, np.random.default_rng([seed, 1]))
    for g, n in enumerate(initial_replicas(policy, cfg, trace)):  # ready at t = 0
        for _ in range(n):
            pool.start(g, 0.0, warm=True)
    requests = RequestQueues(cfg, trace, ticks)
    metrics = None
    if control is not None:
        push_every = max(1, int(round(cfg.metrics_push_interval_s / cfg.control_interval_s)))
        look_back = max(1, int(round(control.look_back_s / cfg.control_interval_s)))
        metrics = LoadMetrics(ticks // ctrl_every + 1, G, push_every, look_back)
    series = np.zeros((ticks, G), dtype=np.int16)
    series_ready = np.zeros((ticks, G), dtype=np.int16)
    held_steps = 0  # GPU-steps held, counted from the GPU pool (checked against `series`)
    report_every = max(1, ticks // 200)
    last_report = 0

    admit, expire, adapter, tokens = pool.admit, requests.expire, requests.adapter, requests.tokens  # hot loop
    for k in range(ticks):
        now = k * dt
        pool.advance(now)
        requests.arrive(k, pool)
        limit = now - cfg.queue_timeout_s
        for g in range(G):
            admit(g, expire(g, limit), adapter, tokens)
        series[k] = pool.held()
        series_ready[k] = pool.ready_counts()
        held_steps += pool.gpus_held()
        if control is not None and k % ctrl_every == 0:
            metric = metrics.observe(k // ctrl_every, pool.inflight() + requests.lengths())
            control.decide(now, metric, pool)
            pool.place_pending(now)
        done = pool.serve(now, dt)
        if done is not None:
            requests.complete(*done)
        if progress is not None and (k + 1 - last_report >= report_every or k == ticks - 1):
            progress(k + 1 - last_report)
            last_report = k + 1

    completed = np.flatnonzero(requests.status == DONE)
    return SimResult(
        policy=policy,
        seed=seed,
        dt_s=dt,
        groups=G,
        n_arrived=int(requests.arrived(ticks)),
        n_completed=int(completed.size),
        n_dropped_full=requests.n_full,
        n_dropped_timeout=requests.n_timeout,
        n_in_system_end=requests.waiting() + pool.running(),
        replica_hours=held_steps * dt / 3600.0,
        latency=requests.finish[completed] - trace.arrival[completed],
        latency_arrival=trace.arrival[completed],
        replicas=series,
        ready=series_ready,
        replica_starts=pool.starts,
        adapter_loads=pool.adapter_loads,
    )
