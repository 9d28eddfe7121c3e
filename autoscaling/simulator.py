"""Simulation of expert-group autoscaling on a large GPU deployment: plain Python + numpy, seeded, no Ray.

What is simulated (defaults in `SimConfig`; docs/autoscaling.md explains the numbers):

- Traffic: `adapters` LoRA adapters spread at random over `groups` expert groups. Adapter popularity is
  Zipf over a ranking that rotates every `shift_every_s` (the adapters ranked `shift_step`..2*step-1
  become the top ones, the former top ones fall to the tail), so group demand moves around. The total
  rate follows a slow "diurnal" cosine, and bursts multiply one group's rate for a few minutes.
  Requests arrive as a Poisson process per group; output tokens are log-normal.
- Replicas: one replica = one GPU running a continuous-batching engine: a decode step over a batch of
  b requests takes `step_fixed_s + step_per_seq_s * b`, at most `max_batch` requests at once; every
  admitted request stalls its replica for `prefill_s`; a request for an adapter not in the replica's
  `max_slots` device slots (LRU) stalls it `adapter_load_s` more. A new replica holds its GPU at once
  and serves after a cold start drawn from `cold_start_s` (model load); a removed replica stops taking
  requests and holds its GPU until its running requests finish (Serve's graceful drain). At most
  `gpus` GPUs exist: replicas that do not fit wait, first come first served.
- Routing: each group has one FIFO queue (the router's handle queue); a request goes to the group's
  least-loaded ready replica that already holds its adapter, else the least-loaded one. Requests are
  dropped when the queue exceeds `max_queued_per_replica * ready replicas` or waited `queue_timeout_s`.
- Metrics as Serve sees them: the group load (queued + running requests, like
  `loraplex.deployments.autoscaling.group_load`) is sampled every `control_interval_s`, pushed every
  `metrics_push_interval_s` (Serve's default 10 s) and averaged over the policy's look-back window.
- Policies, decided every `control_interval_s`:
  * `loraplex`: `loraplex.autoscaling.policy.desired_replicas` per group, then `share_budget` over the
    GPU budget (what `loraplex.deployments.autoscaling.AppBudgetPolicy` does), then Serve's min/max bounds with
    Serve's own delays at 0 (as deployments/app.py configures it): only the policy's hysteresis acts.
  * `loraplex_double_delay`: the earlier wiring, Serve's delays set to the policy's delays as well. The
    policy asks for each scale-down on a single tick, which Serve's delay logic resets on the next:
    groups shrink only when the budget cuts them (docs/autoscaling.md, "Fixed: double delay").
  * `ray_default`: Ray's `replica_queue_length_autoscaling_policy` per group
    (ceil(ongoing / target_ongoing_requests)) with Serve's delay logic (upscale 30 s, downscale 600 s,
    look-back 30 s) and no budget but the hard GPU cap.
  * `static`: GPUs split once in proportion to the initial group demand, never changed.

The simulation advances in fixed steps of `dt_s` (request-level bookkeeping with exact arrival and
interpolated finish times; a request waits at most `dt_s` for the next admission point).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

import numpy as np

from loraplex.autoscaling.policy import PolicyState, ScalingConfig, desired_replicas, share_budget
from loraplex.experts.errors import ConfigError

POLICIES = ("loraplex", "loraplex_double_delay", "ray_default", "static")

# Request status codes.
_QUEUED, _DONE, _DROP_FULL, _DROP_TIMEOUT = 0, 1, 2, 3


@dataclass(frozen=True)
class Burst:
    """`group`'s arrival rate is multiplied by `multiplier` during [start_s, start_s + duration_s)."""

    start_s: float
    duration_s: float
    group: int
    multiplier: float


@dataclass(frozen=True)
class SimConfig:
    # Size of the deployment and the run.
    hours: float = 3.0
    gpus: int = 64
    adapters: int = 500
    groups: int = 20
    dt_s: float = 0.25
    control_interval_s: float = 1.0
    metrics_push_interval_s: float = 10.0  # RAY_SERVE_{REPLICA,HANDLE}_AUTOSCALING_METRIC_PUSH_INTERVAL_S default
    # Traffic.
    rps_per_gpu: float = 1.3  # mean arrival rate = rps_per_gpu * gpus (about 36 % of what the GPUs serve at target load)
    diurnal_amplitude: float = 0.35  # rate = mean * (1 - a * cos(2 pi t / period)): low at start and end, peak mid-run
    diurnal_period_h: float | None = None  # None: the whole run is one period
    zipf_s: float = 1.0
    shift_every_s: float = 1200.0  # popularity ranking rotates every 20 minutes
    shift_step: int | None = None  # ranks the ranking moves by per rotation (None: adapters // 10)
    shift_ramp_s: float = 300.0  # each rotation blends in linearly over this long (0: instant)
    bursts: tuple[Burst, ...] | None = None  # None: random bursts (below); () for none
    burst_every_s: float = 900.0  # mean gap between random bursts
    burst_duration_s: tuple[float, float] = (120.0, 300.0)
    burst_multiplier: tuple[float, float] = (2.0, 4.0)
    tokens_median: float = 200.0  # output tokens per request: log-normal
    tokens_sigma: float = 0.7
    tokens_max: int = 2048
    # Service model of one GPU replica (7B-class model, bf16, continuous batching; order of magnitude).
    step_fixed_s: float = 0.015  # one decode step at batch 1 (weights read once per step)
    step_per_seq_s: float = 0.0006  # extra per sequence in the batch (KV reads, LoRA shrink/expand)
    max_batch: int = 64
    prefill_s: float = 0.03  # engine time taken by each admitted request's prefill
    max_slots: int = 16  # adapters resident on the device per replica (LRU)
    adapter_load_s: float = 0.08  # load a non-resident adapter (host -> device, tens of MB)
    cold_start_s: tuple[float, float] = (60.0, 120.0)  # new replica: process start + 15 GB weights + CUDA init
    # Admission control.
    max_queued_per_replica: int = 128
    queue_timeout_s: float = 60.0
    # Scaling knobs shared by the autoscaled policies.
    target_load: float = 32.0  # requests in the system per replica (half a batch): target_ongoing_requests for Ray
    min_replicas: int = 1
    max_replicas: int = 32
    # loraplex (GroupAutoscaling defaults).
    loraplex_upscale_threshold: float = 1.0
    loraplex_downscale_threshold: float = 0.5
    loraplex_upscale_delay_s: float = 0.0
    loraplex_downscale_delay_s: float = 60.0
    loraplex_look_back_s: float = 10.0
    # ray_default (Serve's AutoscalingConfig defaults).
    ray_upscale_delay_s: float = 30.0
    ray_downscale_delay_s: float = 600.0
    ray_look_back_s: float = 30.0

    def __post_init__(self) -> None:
        p = []
        if self.hours <= 0:
            p.append(f"hours must be > 0, got {self.hours}")
        if self.gpus < self.groups * max(1, self.min_replicas):
            p.append(f"gpus ({self.gpus}) must cover min_replicas ({self.min_replicas}) of each of the {self.groups} groups")
        if self.groups < 1 or self.adapters < self.groups:
            p.append(f"need 1 <= groups ({self.groups}) <= adapters ({self.adapters})")
        if self.dt_s <= 0 or self.control_interval_s < self.dt_s:
            p.append(f"need 0 < dt_s ({self.dt_s}) <= control_interval_s ({self.control_interval_s})")
        if self.metrics_push_interval_s < self.control_interval_s:
            p.append("metrics_push_interval_s must be >= control_interval_s")
        if self.min_replicas < 1:
            p.append("min_replicas must be >= 1 here (every group has traffic; scale to zero is not simulated)")
        if self.max_replicas < self.min_replicas:
            p.append(f"max_replicas ({self.max_replicas}) < min_replicas ({self.min_replicas})")
        if self.cold_start_s[0] > self.cold_start_s[1] or self.cold_start_s[0] < 0:
            p.append(f"cold_start_s must be (low, high) with 0 <= low <= high, got {self.cold_start_s}")
        for b in self.bursts or ():
            if not 0 <= b.group < self.groups:
                p.append(f"burst group {b.group} is not in 0..{self.groups - 1}")
        if p:
            raise ConfigError(p)

    @property
    def horizon_s(self) -> float:
        return self.hours * 3600.0

    @property
    def mean_tokens(self) -> float:
        return self.tokens_median * math.exp(self.tokens_sigma ** 2 / 2)

    def latency_at(self, batch: float) -> float:
        """Time in the system of a mean request on a replica holding `batch` requests."""
        return self.mean_tokens * (self.step_fixed_s + self.step_per_seq_s * batch) + self.prefill_s

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bursts"] = None if self.bursts is None else [asdict(b) for b in self.bursts]
        return d


# ---------------------------------------------------------------------------------------------
# Traffic


@dataclass
class Trace:
    """Every request of a run, sorted by arrival time, plus how the demand was built."""

    arrival: np.ndarray  # seconds
    group: np.ndarray
    adapter: np.ndarray
    tokens: np.ndarray
    group_of: np.ndarray  # adapter -> group
    rates: np.ndarray  # (ticks, groups) expected arrivals per second per group
    bursts: tuple[Burst, ...]

    def initial_rates(self) -> np.ndarray:
        return self.rates[0]

    @property
    def hot_group(self) -> int:
        """The group with the highest peak arrival rate."""
        return int(np.argmax(self.rates.max(axis=0)))


def _zipf(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def make_trace(cfg: SimConfig, seed: int) -> Trace:
    rng = np.random.default_rng([seed, 0])
    n, G, dt = cfg.adapters, cfg.groups, cfg.dt_s
    ticks = int(round(cfg.horizon_s / dt))
    group_of = np.empty(n, dtype=np.int64)
    group_of[rng.permutation(n)] = np.arange(n) % G  # groups by domain, not by popularity
    step = cfg.shift_step if cfg.shift_step is not None else max(1, n // 10)
    zipf = _zipf(n, cfg.zipf_s)
    ids = np.arange(n)
    epochs = int(math.ceil(cfg.horizon_s / cfg.shift_every_s))
    pop = np.stack([zipf[(ids - e * step) % n] for e in range(epochs)])  # (epochs, adapters): adapter id = initial rank
    share = np.stack([np.bincount(group_of, weights=pop[e], minlength=G) for e in range(epochs)])

    if cfg.bursts is None:
        bursts, t = [], float(rng.exponential(cfg.burst_every_s))
        while t < cfg.horizon_s:
            bursts.append(Burst(round(t, 1), round(float(rng.uniform(*cfg.burst_duration_s)), 1), int(rng.integers(G)),
                                round(float(rng.uniform(*cfg.burst_multiplier)), 2)))
            t += float(rng.exponential(cfg.burst_every_s))
        bursts = tuple(bursts)
    else:
        bursts = tuple(cfg.bursts)

    t_mid = (np.arange(ticks) + 0.5) * dt
    period = (cfg.diurnal_period_h or cfg.hours) * 3600.0
    total = cfg.rps_per_gpu * cfg.gpus * (1.0 - cfg.diurnal_amplitude * np.cos(2 * np.pi * t_mid / period))
    epoch_new = np.minimum((t_mid // cfg.shift_every_s).astype(np.int64), epochs - 1)
    epoch_old = np.maximum(epoch_new - 1, 0)
    into = t_mid - epoch_new * cfg.shift_every_s  # seconds since the latest rotation began
    alpha = np.where(epoch_new == 0, 1.0, np.clip(into / cfg.shift_ramp_s, 0.0, 1.0) if cfg.shift_ramp_s > 0 else 1.0)
    mix = (1 - alpha)[:, None] * share[epoch_old] + alpha[:, None] * share[epoch_new]
    rates = total[:, None] * mix
    for b in bursts:
        on = (t_mid >= b.start_s) & (t_mid < b.start_s + b.duration_s)
        rates[on, b.group] *= b.multiplier
    counts = rng.poisson(rates * dt)

    # Adapters: during a ramp a request follows the new ranking with probability alpha * new share / mixed share.
    times, groups, adapters = [], [], []
    members = [np.flatnonzero(group_of == g) for g in range(G)]
    for g in range(G):
        tick_idx = np.repeat(np.arange(ticks), counts[:, g])
        k = len(tick_idx)
        if not k:
            continue
        times.append((tick_idx + rng.random(k)) * dt)
        groups.append(np.full(k, g, dtype=np.int64))
        a_, eo, en = alpha[tick_idx], epoch_old[tick_idx], epoch_new[tick_idx]
        p_new = a_ * share[en, g] / np.maximum(mix[tick_idx, g], 1e-300)
        ep = np.where(rng.random(k) < p_new, en, eo)
        chosen = np.empty(k, dtype=np.int64)
        for e in np.unique(ep):
            sel = np.flatnonzero(ep == e)
            w = pop[e, members[g]]
            chosen[sel] = members[g][rng.choice(len(w), size=len(sel), p=w / w.sum())]
        adapters.append(chosen)
    arrival = np.concatenate(times) if times else np.zeros(0)
    order = np.argsort(arrival, kind="stable")
    k = len(arrival)
    tokens = np.clip(np.round(cfg.tokens_median * np.exp(cfg.tokens_sigma * rng.standard_normal(k))), 1, cfg.tokens_max)
    return Trace(arrival=arrival[order], group=np.concatenate(groups)[order] if k else np.zeros(0, np.int64),
                 adapter=np.concatenate(adapters)[order] if k else np.zeros(0, np.int64), tokens=tokens,
                 group_of=group_of, rates=rates, bursts=bursts)


# ---------------------------------------------------------------------------------------------
# Serve's decision wrapper


def serve_delay(desired: int, target: int, up_delay_s: float, down_delay_s: float, state: dict, now: float) -> int:
    """Mirror of `ray.serve.autoscaling_policy._apply_delay_logic` (Ray 2.60): a change in one direction
    applies only after the policy asked for it continuously for the delay; a reversal resets the clock."""
    counter, since = state.get("counter", 0), state.get("since")
    decision = target
    if desired > target:
        if counter < 0:
            counter, since = 0, None
        counter += 1
        since = now if since is None else since
        if now - since + 1e-6 >= up_delay_s:
            counter, since, decision = 0, None, desired
    elif desired < target:
        if counter > 0:
            counter, since = 0, None
        counter -= 1
        since = now if since is None else since
        if now - since + 1e-6 >= down_delay_s:
            counter, since, decision = 0, None, max(1, desired) if target > 1 else desired
    else:
        counter, since = 0, None
    state["counter"], state["since"] = counter, since
    return decision


def initial_split(weights: Sequence[float], total: int, minimum: int = 1) -> list[int]:
    """`total` replicas in proportion to `weights`, each group at least `minimum` (largest remainder)."""
    G = len(weights)
    w = np.asarray(weights, dtype=float)
    w = w if w.sum() > 0 else np.ones(G)
    floor: set[int] = set()
    while True:  # groups whose share is under the floor get the floor; the rest share what is left
        free = [g for g in range(G) if g not in floor]
        left = total - minimum * len(floor)
        wf = w[free].sum()
        quota = {g: (w[g] / wf if wf > 0 else 1.0 / len(free)) * left for g in free}
        low = [g for g in free if quota[g] < minimum]
        if not low or len(low) == len(free):
            break
        floor.update(low)
    out = [minimum] * G
    for g in free:
        out[g] = max(minimum, int(quota[g]))
    left = total - sum(out)
    for g in sorted(free, key=lambda g: quota[g] - int(quota[g]), reverse=True)[:max(0, left)]:
        out[g] += 1
    return out


# ---------------------------------------------------------------------------------------------
# Results

_CDF_QUANTILES = (0.1, 0.5, 1, 2, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90, 92, 94, 95, 96, 97, 98, 99, 99.5, 99.9, 100)


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
        return {"policy": self.policy, "seed": self.seed, "arrived": self.n_arrived, "completed": self.n_completed,
                "dropped": self.n_dropped, "dropped_queue_full": self.n_dropped_full, "dropped_timeout": self.n_dropped_timeout,
                "in_system_end": self.n_in_system_end, "drop_rate": round(self.drop_rate, 6),
                "p50_s": round(self.p50, 3), "p90_s": round(self.percentile(90), 3), "p99_s": round(self.p99, 3),
                "mean_s": round(float(self.latency.mean()), 3) if self.latency.size else None,
                "replica_hours": round(self.replica_hours, 3), "serving_hours": round(self.serving_hours, 3), "mean_gpus": round(self.replica_hours / (self.replicas.shape[0] * self.dt_s / 3600), 2),
                "peak_gpus": int(self.replicas.sum(axis=1).max()), "replica_starts": self.replica_starts, "adapter_loads": self.adapter_loads}

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
        return {**self.summary(), "series": {
            "every_s": every_s, "t_s": [round((i + 0.5) * k * self.dt_s, 1) for i in range(rep.shape[0])],
            "replicas": np.round(rep, 2).tolist(), "ready": np.round(rdy, 2).tolist(),
            "total_replicas": np.round(rep.sum(axis=1), 2).tolist()},
            "p99_window": {"window_s": window_s, "t_s": [round(e + window_s / 2, 1) for e in edges[:-1]], "p99_s": p99_t},
            "latency_quantiles": {str(q): round(self.percentile(q), 3) for q in _CDF_QUANTILES}}


# ---------------------------------------------------------------------------------------------
# The simulation


def _scaling_config(cfg: SimConfig) -> ScalingConfig:
    """What `AppBudgetPolicy` builds from a group's autoscaling_config (`_cfg_from`: min/max, target, delays;
    thresholds stay at ScalingConfig's defaults, which the simulation's defaults equal)."""
    return ScalingConfig(min_replicas=cfg.min_replicas, max_replicas=cfg.max_replicas, target_load=cfg.target_load,
                         upscale_threshold=cfg.loraplex_upscale_threshold, downscale_threshold=cfg.loraplex_downscale_threshold,
                         upscale_delay_s=cfg.loraplex_upscale_delay_s, downscale_delay_s=cfg.loraplex_downscale_delay_s)


def initial_replicas(policy: str, cfg: SimConfig, trace: Trace) -> list[int]:
    """Start counts: static splits all GPUs; the autoscaled policies start sized to the initial demand."""
    rates = trace.initial_rates()
    if policy == "static":
        return initial_split(rates, cfg.gpus, cfg.min_replicas)
    per_replica_rps = cfg.target_load / cfg.latency_at(cfg.target_load)
    want = {g: min(cfg.max_replicas, max(cfg.min_replicas, math.ceil(rates[g] / per_replica_rps))) for g in range(cfg.groups)}
    fit = share_budget(want, {g: float(rates[g]) for g in want}, cfg.gpus, {g: cfg.min_replicas for g in want})
    return [fit[g] for g in range(cfg.groups)]


def simulate(policy: str, cfg: SimConfig | None = None, seed: int = 0, *, trace: Trace | None = None,
             progress: Callable[[int], None] | None = None) -> SimResult:
    """Run one policy over the seeded trace; `progress(n)` is called with steps done since the last call."""
    if policy not in POLICIES:
        raise ConfigError(f"unknown policy {policy!r}; choose one of {list(POLICIES)}")
    cfg = cfg or SimConfig()
    trace = trace if trace is not None else make_trace(cfg, seed)
    rng = np.random.default_rng([seed, 1])
    G, R, B, dt = cfg.groups, cfg.gpus, cfg.max_batch, cfg.dt_s
    ticks = int(round(cfg.horizon_s / dt))
    ctrl_every = max(1, int(round(cfg.control_interval_s / dt)))
    push_every = max(1, int(round(cfg.metrics_push_interval_s / cfg.control_interval_s)))
    lorap = policy.startswith("loraplex")
    look_back_s = cfg.loraplex_look_back_s if lorap else cfg.ray_look_back_s
    # Serve's own delay logic around the loraplex policy: off as deployments/app.py configures it, or set to
    # the policy's delays too (`loraplex_double_delay`, the earlier wiring).
    serve_up, serve_down = (cfg.loraplex_upscale_delay_s, cfg.loraplex_downscale_delay_s) if policy == "loraplex_double_delay" else (0.0, 0.0)
    look_back = max(1, int(round(look_back_s / cfg.control_interval_s)))
    t0, t1 = cfg.step_fixed_s, cfg.step_per_seq_s

    # Requests (Python lists: scalar access in the hot loop).
    N = len(trace.arrival)
    arr_l, grp_l, ad_l, tok_l = trace.arrival.tolist(), trace.group.tolist(), trace.adapter.tolist(), trace.tokens.tolist()
    finish = np.full(N, np.nan)
    status = np.zeros(N, dtype=np.int8)
    tick_start = np.searchsorted(trace.arrival, np.arange(ticks + 1) * dt).tolist()

    # Replicas: one per GPU slot.
    r_group = np.full(R, -1, dtype=np.int64)
    n_active = np.zeros(R, dtype=np.int64)
    stall = np.zeros(R)
    rem = np.zeros((R, B))
    occ = np.zeros((R, B), dtype=bool)
    req = np.full((R, B), -1, dtype=np.int64)
    free_cols: list[list[int]] = [list(range(B)) for _ in range(R)]
    lru: list[OrderedDict] = [OrderedDict() for _ in range(R)]
    free_gpus = list(range(R - 1, -1, -1))
    ready: list[list[int]] = [[] for _ in range(G)]
    starting: list[list[tuple[float, int]]] = [[] for _ in range(G)]
    draining: list[int] = []
    pending: deque[int] = deque()  # groups waiting for a GPU, first come first served
    n_pending = [0] * G
    n_draining = [0] * G
    members = [np.flatnonzero(trace.group_of == g).tolist() for g in range(G)]
    counters = {"starts": 0, "adapter_loads": 0}

    def new_replica(g: int, now: float, warm: bool) -> None:
        r = free_gpus.pop()
        r_group[r] = g
        stall[r] = 0.0
        lru[r].clear()
        for a in members[g][:cfg.max_slots]:  # pinned adapters loaded at start
            lru[r][a] = True
        if warm:
            ready[g].append(r)
        else:
            starting[g].append((now + float(rng.uniform(*cfg.cold_start_s)), r))
            counters["starts"] += 1

    def release(r: int) -> None:
        r_group[r] = -1
        free_gpus.append(r)

    def place_pending(now: float) -> None:
        while pending and free_gpus:
            g = pending.popleft()
            n_pending[g] -= 1
            new_replica(g, now, warm=False)

    def target_of(g: int) -> int:
        return len(ready[g]) + len(starting[g]) + n_pending[g]

    def set_target(g: int, n: int, now: float) -> None:
        cur = target_of(g)
        if n > cur:
            for _ in range(n - cur):
                pending.append(g)
            n_pending[g] += n - cur
            return
        k = cur - n
        if k <= 0:
            return
        if n_pending[g]:  # cancel replicas not placed yet, newest first
            drop = min(k, n_pending[g])
            kept, seen = deque(), 0
            for x in reversed(pending):
                if x == g and seen < drop:
                    seen += 1
                    continue
                kept.appendleft(x)
            pending.clear()
            pending.extend(kept)
            n_pending[g] -= drop
            k -= drop
        while k and starting[g]:  # then replicas still starting (Serve stops those first)
            _, r = starting[g].pop()
            release(r)
            k -= 1
        while k and ready[g]:  # then the least busy serving replicas drain
            r = min(ready[g], key=lambda x: n_active[x])
            ready[g].remove(r)
            draining.append(r)
            n_draining[g] += 1
            k -= 1

    # Initial replicas, ready at t = 0.
    for g, n in enumerate(initial_replicas(policy, cfg, trace)):
        for _ in range(n):
            new_replica(g, 0.0, warm=True)

    queues: list[deque[int]] = [deque() for _ in range(G)]
    scfg = _scaling_config(cfg)
    pstate = [PolicyState() for _ in range(G)]
    dstate: list[dict] = [{} for _ in range(G)]
    n_ctrl = ticks // ctrl_every + 1
    samples = np.zeros((n_ctrl, G))
    metric = np.zeros(G)
    series = np.zeros((ticks, G), dtype=np.int16)
    series_ready = np.zeros((ticks, G), dtype=np.int16)
    held_steps = 0  # GPU-steps held, counted from the GPU pool (checked against `series`)
    n_full = n_timeout = 0
    report_every = max(1, ticks // 200)
    last_report = 0

    for k in range(ticks):
        now = k * dt
        # 1. replica lifecycle: cold starts finish, drains finish, waiting replicas get freed GPUs.
        for g in range(G):
            if starting[g]:
                still = []
                for at, r in starting[g]:
                    if at <= now:
                        ready[g].append(r)
                    else:
                        still.append((at, r))
                starting[g] = still
        if draining:
            keep = []
            for r in draining:
                if n_active[r] == 0:
                    n_draining[int(r_group[r])] -= 1
                    release(r)
                else:
                    keep.append(r)
            draining = keep
        if pending and free_gpus:
            place_pending(now)

        # 2. arrivals of [now - dt, now) join their group's queue, or are refused when it is full.
        for i in range(tick_start[k - 1] if k else 0, tick_start[k]):
            g = grp_l[i]
            q = queues[g]
            if len(q) >= cfg.max_queued_per_replica * max(1, len(ready[g])):
                status[i] = _DROP_FULL
                n_full += 1
            else:
                q.append(i)

        # 3. timeouts, then admission into ready replicas.
        limit = now - cfg.queue_timeout_s
        for g in range(G):
            q = queues[g]
            while q and arr_l[q[0]] < limit:
                status[q.popleft()] = _DROP_TIMEOUT
                n_timeout += 1
            rs = ready[g]
            if not q or not rs:
                continue
            free = [B - int(n_active[r]) for r in rs]
            total_free = sum(free)
            while q and total_free:
                i = q.popleft()
                a = ad_l[i]
                best = best_any = -1
                bf = baf = 0
                for j, r in enumerate(rs):
                    f = free[j]
                    if f > baf:
                        best_any, baf = j, f
                    if f > bf and a in lru[r]:
                        best, bf = j, f
                extra = cfg.prefill_s
                if best < 0:
                    best = best_any
                    r = rs[best]
                    cache = lru[r]
                    if len(cache) >= cfg.max_slots:
                        cache.popitem(last=False)
                    cache[a] = True
                    extra += cfg.adapter_load_s
                    counters["adapter_loads"] += 1
                else:
                    r = rs[best]
                    lru[r].move_to_end(a)
                free[best] -= 1
                total_free -= 1
                c = free_cols[r].pop()
                req[r, c] = i
                rem[r, c] = tok_l[i]
                occ[r, c] = True
                n_active[r] += 1
                stall[r] += extra

        # 4. accounting: GPUs held per group this step.
        row = [len(ready[g]) + len(starting[g]) + n_draining[g] for g in range(G)]
        series[k] = row
        series_ready[k] = [len(ready[g]) for g in range(G)]
        held_steps += R - len(free_gpus)

        # 5. control: sample load, push metrics, decide.
        if k % ctrl_every == 0 and policy != "static":
            c_idx = k // ctrl_every
            inflight = np.zeros(G)
            for g in range(G):
                if ready[g]:
                    inflight[g] = n_active[ready[g]].sum()
            samples[c_idx] = inflight + np.array([len(q) for q in queues])
            if c_idx % push_every == 0:
                metric = samples[max(0, c_idx - look_back + 1):c_idx + 1].mean(axis=0)
            if lorap:
                wishes, demand = {}, {}
                for g in range(G):
                    running, target = len(ready[g]), target_of(g)
                    current = max(running, target) if running else target
                    wishes[g], pstate[g] = desired_replicas(current, float(metric[g]), scfg, pstate[g], now)
                    demand[g] = float(metric[g])
                shares = share_budget(wishes, demand, cfg.gpus, {g: cfg.min_replicas for g in range(G)})
                for g in range(G):
                    target = target_of(g)
                    if not ready[g] and metric[g] > 0:  # Serve's cold-start fast path
                        n = max(1, target)
                    else:
                        n = serve_delay(shares[g], target, serve_up, serve_down, dstate[g], now)
                    set_target(g, min(cfg.max_replicas, max(cfg.min_replicas, n)), now)
            else:  # ray_default
                for g in range(G):
                    running, target = len(ready[g]), target_of(g)
                    if running == 0:
                        n = max(1, target) if metric[g] > 0 else target
                    else:
                        desired = math.ceil(metric[g] / cfg.target_load - 1e-9)
                        n = serve_delay(desired, target, cfg.ray_upscale_delay_s, cfg.ray_downscale_delay_s, dstate[g], now)
                    set_target(g, min(cfg.max_replicas, max(cfg.min_replicas, n)), now)
            if pending and free_gpus:
                place_pending(now)

        # 6. service of [now, now + dt): every busy replica decodes its batch.
        used = np.minimum(stall, dt)
        stall -= used
        step = t0 + t1 * n_active
        prog = (dt - used) / step
        rem -= prog[:, None]
        done = occ & (rem <= 0)
        if done.any():
            rr, cc = np.nonzero(done)
            ids = req[rr, cc]
            finish[ids] = now + used[rr] + (rem[rr, cc] + prog[rr]) * step[rr]
            status[ids] = _DONE
            req[rr, cc] = -1
            occ[rr, cc] = False
            n_active -= np.bincount(rr, minlength=R)
            for r, c in zip(rr.tolist(), cc.tolist()):
                free_cols[r].append(c)
        if progress is not None and (k + 1 - last_report >= report_every or k == ticks - 1):
            progress(k + 1 - last_report)
            last_report = k + 1

    completed = np.flatnonzero(status == _DONE)
    arrived = tick_start[ticks - 1] if ticks else 0  # arrivals admitted into the system (the last step's arrivals join at its start)
    in_system = sum(len(q) for q in queues) + int(n_active.sum())
    return SimResult(policy=policy, seed=seed, dt_s=dt, groups=G, n_arrived=int(arrived), n_completed=int(completed.size),
                     n_dropped_full=n_full, n_dropped_timeout=n_timeout, n_in_system_end=in_system,
                     replica_hours=held_steps * dt / 3600.0, latency=finish[completed] - trace.arrival[completed],
                     latency_arrival=trace.arrival[completed], replicas=series, ready=series_ready,
                     replica_starts=counters["starts"], adapter_loads=counters["adapter_loads"])


# ---------------------------------------------------------------------------------------------
# Comparison


def evaluate_target(loraplex: SimResult, default: SimResult, p99_tolerance: float = 0.10, hours_tolerance: float = 0.05) -> dict:
    """The goal: the default policy's p99 (within `p99_tolerance`) with >= 30 % fewer replica-hours, or
    >= 2x lower p99 at equal replica-hours (within `hours_tolerance`); never more drops."""
    ratio_p99 = loraplex.p99 / default.p99
    ratio_hours = loraplex.replica_hours / default.replica_hours
    drops_ok = loraplex.drop_rate <= default.drop_rate + 1e-3
    a = ratio_p99 <= 1 + p99_tolerance and ratio_hours <= 0.70
    b = ratio_p99 <= 0.5 and ratio_hours <= 1 + hours_tolerance
    return {"p99_ratio": round(ratio_p99, 3), "replica_hours_ratio": round(ratio_hours, 3), "replica_hours_saved": round(1 - ratio_hours, 3),
            "drops_not_worse": bool(drops_ok), "same_p99_30pct_fewer_hours": bool(a and drops_ok),
            "half_p99_equal_hours": bool(b and drops_ok), "met": bool((a or b) and drops_ok),
            "rule": f"p99 <= {1 + p99_tolerance:.2f}x and hours <= 0.70x, or p99 <= 0.5x and hours <= {1 + hours_tolerance:.2f}x; drop rate <= default + 0.1 pt"}


def compare(cfg: SimConfig | None = None, seed: int = 0, policies: Sequence[str] = POLICIES,
            progress: Callable[[int], None] | None = None, every_s: float = 60.0) -> dict:
    """Run every policy on the same seeded trace; a JSON-able dict (see scripts/simulate_autoscaling.py)."""
    cfg = cfg or SimConfig()
    trace = make_trace(cfg, seed)
    results = {p: simulate(p, cfg, seed, trace=trace, progress=progress) for p in policies}
    out = {"config": cfg.to_dict(), "seed": seed,
           "trace": {"requests": int(len(trace.arrival)), "mean_rps": round(len(trace.arrival) / cfg.horizon_s, 2),
                     "hot_group": trace.hot_group, "bursts": [asdict(b) for b in trace.bursts],
                     "per_replica_rps_at_target": round(cfg.target_load / cfg.latency_at(cfg.target_load), 3),
                     "latency_unloaded_s": round(cfg.latency_at(1), 3), "latency_at_target_s": round(cfg.latency_at(cfg.target_load), 3),
                     "rates_every_s": every_s, "group_rps": _downsample(trace.rates, cfg.dt_s, every_s)},
           "policies": {p: r.to_dict(every_s=every_s) for p, r in results.items()}}
    if "ray_default" in results:
        out["targets"] = {p: evaluate_target(results[p], results["ray_default"]) for p in ("loraplex", "loraplex_double_delay") if p in results}
    return out


def _downsample(x: np.ndarray, dt: float, every_s: float) -> list:
    k = max(1, int(round(every_s / dt)))
    n = x.shape[0] // k * k
    return np.round(x[:n].reshape(-1, k, x.shape[1]).mean(axis=1), 3).tolist()


def total_steps(cfg: SimConfig, policies: Sequence[str] = POLICIES) -> int:
    """Steps `compare` reports through `progress` (for a progress bar)."""
    return int(round(cfg.horizon_s / cfg.dt_s)) * len(policies)


# ---------------------------------------------------------------------------------------------
# Frontier: p99 against replica-hours over the per-replica target

SWEEP_TARGETS = (16.0, 24.0, 32.0, 48.0, 64.0)


def frontier(cfg: SimConfig | None = None, seeds: Sequence[int] = (0,), policies: Sequence[str] = ("loraplex", "ray_default"),
             targets: Sequence[float] = SWEEP_TARGETS, progress: Callable[[int], None] | None = None) -> dict:
    """Each policy at each per-replica target (`target_load`, which is Ray's `target_ongoing_requests` too) on
    each seed's trace, and `frontier_gap` of every other policy against `ray_default`.

    One operating point trades latency for replicas, so two policies are compared along their p99-vs-replica-hours
    curves: {"targets", "seeds", "points": {seed: {policy: [summary + "target_load" + "dominated", one per target]}},
    "gaps": {seed: {policy: [frontier_gap against each ray_default point]}}}; `cfg.target_load` is the reference
    target (the single-comparison default)."""
    cfg = cfg or SimConfig()
    out = {"config": cfg.to_dict(), "reference_target": cfg.target_load, "targets": list(targets), "seeds": list(seeds),
           "points": {}, "gaps": {}}
    for seed in seeds:
        trace = make_trace(cfg, seed)  # the traffic does not depend on the target
        pts = {p: [{"target_load": t, **simulate(p, replace(cfg, target_load=t), seed, trace=trace, progress=progress).summary()}
                   for t in targets] for p in policies}
        for points in pts.values():
            _mark_dominated(points)
        out["points"][str(seed)] = pts
        if "ray_default" in pts:
            out["gaps"][str(seed)] = {p: [frontier_gap(pts[p], ref) for ref in pts["ray_default"]] for p in pts if p != "ray_default"}
    return out


def _mark_dominated(points: Sequence[dict]) -> None:
    """`dominated`: another target of the same policy is no worse in p99, replica-hours and drop rate, and better in
    one (such a point is off the policy's own frontier)."""
    keys = ("p99_s", "replica_hours", "drop_rate")
    for r in points:
        r["dominated"] = any(all(o[k] <= r[k] for k in keys) and any(o[k] < r[k] for k in keys) for o in points if o is not r)


def _along(points: Sequence[dict], x: str, value: float, y: str) -> dict | None:
    """`points` (in target order) as a piecewise-linear curve; where `x` equals `value`, the lowest `y` (and the
    drop rate and target there), or None when no segment brackets `value`."""
    best = None
    for a, b in zip(points, points[1:]):
        lo, hi = sorted((a[x], b[x]))
        if not lo <= value <= hi:
            continue
        w = 0.0 if hi == lo else (value - a[x]) / (b[x] - a[x])
        at = {k: a[k] + w * (b[k] - a[k]) for k in (y, "drop_rate", "target_load")}
        if best is None or at[y] < best[y]:
            best = at
    return None if best is None else {k: round(v, 6 if k == "drop_rate" else 3) for k, v in best.items()}


def frontier_gap(points: Sequence[dict], ref: dict) -> dict:
    """Where `points` (one policy's frontier, in target order) stands against one reference point `ref`:
    replica-hours at the reference's p99 and p99 at the reference's replica-hours, linearly interpolated between
    neighbouring targets (None when the sweep does not bracket it: add targets). A point whose drop rate is
    more than 0.1 pt above the reference's does not count (`drops_not_worse`, like `evaluate_target`)."""
    at_p99 = _along(points, "p99_s", ref["p99_s"], "replica_hours")
    at_hours = _along(points, "replica_hours", ref["replica_hours"], "p99_s")

    def ok(at: dict | None) -> bool:
        return at is not None and at["drop_rate"] <= ref["drop_rate"] + 1e-3

    out = {"ref_target_load": ref["target_load"], "ref_p99_s": ref["p99_s"], "ref_replica_hours": ref["replica_hours"],
           "ref_drop_rate": ref["drop_rate"], "at_ref_p99": at_p99, "at_ref_hours": at_hours,
           "hours_saved": None if at_p99 is None else round(1 - at_p99["replica_hours"] / ref["replica_hours"], 3),
           "p99_ratio": None if at_hours is None else round(at_hours["p99_s"] / ref["p99_s"], 3)}
    out["drops_not_worse"] = {"at_ref_p99": ok(at_p99), "at_ref_hours": ok(at_hours)}
    out["same_p99_30pct_fewer_hours"] = bool(ok(at_p99) and out["hours_saved"] >= 0.30)
    out["half_p99_equal_hours"] = bool(ok(at_hours) and out["p99_ratio"] <= 0.5)
    out["met"] = out["same_p99_30pct_fewer_hours"] or out["half_p99_equal_hours"]
    return out
