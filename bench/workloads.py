"""What the load generators send: offered-rate ladders, Zipf adapter popularity, seeded Poisson arrivals, prompts.

Pure and seeded (``random.Random``, no I/O), so every system under test gets the identical request sequence at
each rate and a rerun with the same seed offers the same load.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import NamedTuple


class Arrival(NamedTuple):
    """One scheduled request: `offset` seconds after the step starts, for `adapter`, with token ids `prompt`."""

    offset: float
    adapter: str
    prompt: list[int]


@dataclass(frozen=True)
class WorkloadSpec:
    """How one rate step's arrivals are drawn (see `make_workload`)."""

    seed: int
    vocab: int  # prompt ids are drawn from [3, vocab): 0-2 are pad/bos/eos in the bench tokenizer
    prompt_tokens: int
    zipf_s: float
    step_seconds: float
    min_requests: int
    max_step_seconds: float
    max_requests: int


def rate_ladder(rate_min: float, rate_max: float, factor: float) -> list[float]:
    """Geometric ladder rate_min, rate_min*factor, ... up to rate_max (inclusive, float error allowed); 3 decimals."""
    out, r = [], rate_min
    while r <= rate_max * (1 + 1e-9):
        out.append(round(r, 3))
        r *= factor
    return out


def parse_rates(text: str) -> list[float]:
    """A comma list of offered rates ("2,8"); empty entries are skipped."""
    return [float(x) for x in text.split(",") if x.strip()]


def zipf_weights(n: int, s: float) -> list[float]:
    """Normalised Zipf popularity: rank k (1-based) gets weight 1/k^s."""
    w = [1.0 / (k**s) for k in range(1, n + 1)]
    total = sum(w)
    return [x / total for x in w]


def step_duration(spec: WorkloadSpec, rate: float) -> float:
    """Arrival window of a step: at least `step_seconds`, long enough for `min_requests`, at most `max_step_seconds`."""
    return min(max(spec.step_seconds, spec.min_requests / rate), spec.max_step_seconds)


def make_workload(spec: WorkloadSpec, rate: float, step: int, names: list[str]) -> list[Arrival]:
    """Poisson arrivals at `rate` with Zipf-popular adapters, seeded per (seed, step).

    Which adapter is popular is fixed for the whole run (a shuffle seeded by `seed` alone), so the ladder's
    steps differ only in rate and draw, not in which adapters are hot.
    """
    rng = random.Random(spec.seed * 1_000_003 + step)
    duration = step_duration(spec, rate)
    ranked = names[:]
    random.Random(spec.seed).shuffle(ranked)
    weights = zipf_weights(len(ranked), spec.zipf_s)
    out: list[Arrival] = []
    t = 0.0
    while len(out) < spec.max_requests:
        t += rng.expovariate(rate)
        if t > duration:
            break
        adapter = rng.choices(ranked, weights)[0]
        out.append(Arrival(t, adapter, [rng.randrange(3, spec.vocab) for _ in range(spec.prompt_tokens)]))
    return out


def consistency_pairs(spec: WorkloadSpec, names: list[str], n: int = 16) -> list[tuple[str, list[int]]]:
    """`n` (adapter, prompt) pairs cycling through `names`, seeded apart from the arrivals (seed + 7)."""
    rng = random.Random(spec.seed + 7)
    return [
        (names[i % len(names)], [rng.randrange(3, spec.vocab) for _ in range(spec.prompt_tokens)]) for i in range(n)
    ]


def demo_prompts(per_task: int, seed: int) -> list[tuple[str, str]]:
    """(task, prompt) pairs of held-out demo examples, `per_task` of each task: the soak and chaos request pool."""
    from loraplex.demo.data import TASKS, make_examples

    return [(t, e.prompt) for t in TASKS for e in make_examples(t, per_task, seed, "heldout")]
