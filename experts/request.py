"""What goes into the engine and what comes out: one `Request` per generation, one `Result` per answer."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from loraplex.experts.choices import TokenCallback
from loraplex.experts.composition import Base, Composition, parse_composition
from loraplex.experts.logprobs import TokenLogprob
from loraplex.experts.sampling import SamplingParams


@dataclass
class Request:
    prompt: str | list[int]  # text, or token ids (OpenAI completions accept both)
    composition: Composition = field(default_factory=Base)
    params: SamplingParams = field(default_factory=SamplingParams)
    on_token: TokenCallback | None = None
    cancel: threading.Event | None = None  # set it (e.g. the client went away) to stop this request's decoding
    arrival: float = field(default_factory=time.perf_counter)  # when the engine got it (latency metrics start here)
    request_id: str | None = None  # the client's id (x-request-id): the vLLM engine's request ids carry it

    @classmethod
    def from_json(
        cls,
        prompt: str | list[int],
        composition: object = None,
        on_token: TokenCallback | None = None,
        cancel: threading.Event | None = None,
        request_id: str | None = None,
        **sampling: object,
    ) -> Request:
        comp = parse_composition(composition)
        return cls(prompt, comp, SamplingParams(**sampling), on_token, cancel, request_id=request_id)  # type: ignore[arg-type]


@dataclass
class Timing:
    """Where a request's time went on its replica, in seconds from its arrival there (the latency metrics).
    `queue_s` is the wait for a batch row (None where the engine does not say, e.g. vLLM's own queue)."""

    queue_s: float | None
    ttft_s: float | None  # to the first token the client sees (a chain: its last stage's first token)
    e2e_s: float
    token_gaps_s: list[float] = field(default_factory=list)  # between consecutive visible tokens (ITL)

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first (vLLM's TPOT)."""
        return sum(self.token_gaps_s) / len(self.token_gaps_s) if self.token_gaps_s else None


@dataclass
class Choice:
    """One of the `n` answers of a request (`Result` holds the first one in its own fields)."""

    text: str
    finish_reason: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None


@dataclass
class Result:
    """One answer. For a chain, `text` is the last stage's output and the token counts sum over every stage
    (each stage is a full prompt + completion the replica ran)."""

    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    stages: list[str] = field(default_factory=list)  # chain: every stage's output, last == text
    token_ids: list[int] = field(default_factory=list)  # the (last stage's) generated tokens, EOS excluded
    # per token of `token_ids`, when asked for, plus the stopping token's (EOS or a stop token id) when one ended it
    logprobs: list[TokenLogprob] | None = None
    more: list[Choice] = field(default_factory=list)  # choices 2..n (n > 1)
    prompt_logprobs: list[TokenLogprob] | None = None  # per prompt token (echo), the first without a value
    timing: Timing | None = None

    @property
    def choices(self) -> list[Choice]:
        return [Choice(self.text, self.finish_reason, self.token_ids, self.logprobs), *self.more]

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
