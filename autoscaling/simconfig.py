"""What one autoscaling simulation run is: the deployment's size, its traffic, the replica service model and the
scaling knobs (`SimConfig`). docs/autoscaling.md explains where the numbers come from.

The loraplex policy's knobs are a `loraplex.config.app.GroupAutoscaling`, the same model a real group's
`autoscaling` validates as, so the simulation has no defaults of its own for them; `DOCS_PRESET` holds the
values of the runs in docs/autoscaling.md (a 64-GPU deployment, not the CPU demo GroupAutoscaling defaults to).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from loraplex.autoscaling.policy import knobs_from_kwargs
from loraplex.config.app import GroupAutoscaling
from loraplex.experts.errors import ConfigError

# The group knobs of every run in docs/autoscaling.md and docs/autoscaling_{sim,frontier}.json, so they reproduce
# whatever GroupAutoscaling's defaults become: max 32 replicas and target_load 32 (half a 64-request batch) for
# 20 groups on 64 GPUs, look-back 10 s; thresholds and delays are written out though they equal the defaults today.
DOCS_PRESET = GroupAutoscaling(
    enabled=True,
    min_replicas=1,
    max_replicas=32,
    target_load=32.0,
    upscale_threshold=1.0,
    downscale_threshold=0.5,
    upscale_delay_s=0.0,
    downscale_delay_s=60.0,
    look_back_period_s=10.0,
)


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
    rps_per_gpu: float = (
        1.3  # mean arrival rate = rps_per_gpu * gpus (about 36 % of what the GPUs serve at target load)
    )
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
    # Every group's knobs. loraplex reads all of them; ray_default takes min/max and target_load (as its
    # target_ongoing_requests, which build_app sets to target_load too) with Serve's own delays below.
    autoscaling: GroupAutoscaling = DOCS_PRESET
    # ray_default (Serve's AutoscalingConfig defaults).
    ray_upscale_delay_s: float = 30.0
    ray_downscale_delay_s: float = 600.0
    ray_look_back_s: float = 30.0

    def __post_init__(self) -> None:
        p = []
        a = self.autoscaling
        if self.hours <= 0:
            p.append(f"hours must be > 0, got {self.hours}")
        if self.gpus < self.groups * max(1, a.min_replicas):
            p.append(
                f"gpus ({self.gpus}) must cover min_replicas ({a.min_replicas}) of each of the {self.groups} groups"
            )
        if self.groups < 1 or self.adapters < self.groups:
            p.append(f"need 1 <= groups ({self.groups}) <= adapters ({self.adapters})")
        if self.dt_s <= 0 or self.control_interval_s < self.dt_s:
            p.append(f"need 0 < dt_s ({self.dt_s}) <= control_interval_s ({self.control_interval_s})")
        if self.metrics_push_interval_s < self.control_interval_s:
            p.append("metrics_push_interval_s must be >= control_interval_s")
        if a.min_replicas < 1:
            p.append(
                "autoscaling.min_replicas must be >= 1 here (every group has traffic; scale to zero is not simulated)"
            )
        if self.cold_start_s[0] > self.cold_start_s[1] or self.cold_start_s[0] < 0:
            p.append(f"cold_start_s must be (low, high) with 0 <= low <= high, got {self.cold_start_s}")
        for b in self.bursts or ():
            if not 0 <= b.group < self.groups:
                p.append(f"burst group {b.group} is not in 0..{self.groups - 1}")
        if p:
            raise ConfigError(p)

    def with_knobs(self, **changes) -> SimConfig:
        """This config with some group knobs changed, e.g. `with_knobs(target_load=48, downscale_delay_s=120)`
        (validated like a group's `autoscaling`: bad knobs raise `ConfigError`)."""
        return replace(self, autoscaling=knobs_from_kwargs({**self.autoscaling.model_dump(), **changes}))

    @property
    def horizon_s(self) -> float:
        return self.hours * 3600.0

    @property
    def mean_tokens(self) -> float:
        return self.tokens_median * math.exp(self.tokens_sigma**2 / 2)

    def latency_at(self, batch: float) -> float:
        """Time in the system of a mean request on a replica holding `batch` requests."""
        return self.mean_tokens * (self.step_fixed_s + self.step_per_seq_s * batch) + self.prefill_s

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bursts"] = None if self.bursts is None else [asdict(b) for b in self.bursts]
        d["autoscaling"] = self.autoscaling.model_dump()
        return d
