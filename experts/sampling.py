"""Sampling parameters and the per-row token choice (greedy, temperature, top-k, top-p, seeded)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from loraplex.experts.errors import SamplingError

MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 256  # each stop string; every decode step scans the text tail for each of them


@dataclass(frozen=True)
class SamplingParams:
    """OpenAI-style knobs; `temperature == 0` means greedy, `top_k == 0` means no top-k cut."""

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None
    ignore_eos: bool = False  # decode exactly max_tokens (benchmarks, load tests)

    def __post_init__(self) -> None:
        problems = []

        def num(v: object) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            problems.append(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not num(self.temperature) or not 0 <= self.temperature <= 100:
            problems.append(f"temperature must be in [0, 100], got {self.temperature!r}")
        if not num(self.top_p) or not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            problems.append(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        stop = self.stop
        if isinstance(stop, str):
            object.__setattr__(self, "stop", (stop,))
        elif (
            not isinstance(stop, (tuple, list))
            or len(stop) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in stop)
        ):
            problems.append(
                f"stop must be a string or a list of at most {MAX_STOP_STRINGS} non-empty strings, got "
                f"{str(stop)[:200]!r}"
            )
        else:
            object.__setattr__(self, "stop", tuple(stop))
        too_long = [len(s) for s in self.stop if len(s) > MAX_STOP_CHARS] if isinstance(self.stop, tuple) else []
        if too_long:
            problems.append(f"stop strings may have at most {MAX_STOP_CHARS} characters, got one of {max(too_long)}")
        if self.seed is not None and (
            not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63
        ):
            problems.append(f"seed must be an integer in [0, 2**63) or null, got {self.seed!r}")
        if not isinstance(self.ignore_eos, bool):
            problems.append(f"ignore_eos must be true or false, got {self.ignore_eos!r}")
        if problems:
            raise SamplingError("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def choose_tokens(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> torch.Tensor:
    """One token per row of `logits: [rows, vocab]`; greedy rows are vectorised, sampled rows use their own
    generator."""
    tokens = logits.argmax(dim=-1)  # [rows]
    for i, p in enumerate(params):
        if p.greedy:
            continue
        row = logits[i].float() / p.temperature  # [vocab]
        if p.top_k > 0 and p.top_k < row.numel():
            kth = torch.topk(row, p.top_k).values[-1]
            row = row.masked_fill(row < kth, float("-inf"))
        probs = torch.softmax(row, dim=-1)
        if p.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < p.top_p  # always keeps the most likely token
            mask = torch.zeros_like(probs, dtype=torch.bool).scatter(0, order, keep)
            probs = torch.where(mask, probs, torch.zeros_like(probs))
            probs = probs / probs.sum()
        tokens[i] = torch.multinomial(probs.cpu(), 1, generator=generators[i]).to(tokens.device)[0]
    return tokens
