"""The requests of one simulated run (`make_trace`): seeded, every request with its arrival time, group,
adapter and output length, drawn before any policy runs so every policy sees the same traffic.

- `adapters` LoRA adapters are spread at random over `groups` expert groups (groups by domain, not by
  popularity). Adapter popularity is Zipf over a ranking that rotates every `shift_every_s` (the adapters
  ranked `shift_step`..2*step-1 become the top ones, the former top ones fall to the tail), blended in over
  `shift_ramp_s`, so group demand moves around.
- The total rate follows a slow "diurnal" cosine, and bursts multiply one group's rate for a few minutes.
- Requests arrive as a Poisson process per group and step; output tokens are log-normal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from loraplex.autoscaling.simconfig import Burst, SimConfig


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
    """The seeded trace of `cfg`'s traffic. It draws from its own stream ([seed, 0]; the simulation's cold starts
    use [seed, 1]), so one trace serves every policy and every target of a sweep unchanged."""
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
            bursts.append(
                Burst(
                    round(t, 1),
                    round(float(rng.uniform(*cfg.burst_duration_s)), 1),
                    int(rng.integers(G)),
                    round(float(rng.uniform(*cfg.burst_multiplier)), 2),
                )
            )
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
    return Trace(
        arrival=arrival[order],
        group=np.concatenate(groups)[order] if k else np.zeros(0, np.int64),
        adapter=np.concatenate(adapters)[order] if k else np.zeros(0, np.int64),
        tokens=tokens,
        group_of=group_of,
        rates=rates,
        bursts=bursts,
    )
