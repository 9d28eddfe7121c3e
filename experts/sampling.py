"""Sampling parameters and the per-row token choice (greedy, temperature, top-k, top-p, seeded)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import torch

from loraplex.experts.errors import SamplingError

MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 256  # each stop string; every decode step scans the text tail for each of them
MAX_N = 8  # choices per request
MAX_LOGPROBS = 20  # top alternatives per token (OpenAI's chat limit; vLLM's default max_logprobs)
MAX_LOGIT_BIAS = 300  # tokens a request may bias
STRUCTURED = ("json_object", "json_schema")


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
    n: int = 1  # choices, sharing one prefill
    logprobs: int | None = None  # log probabilities of the chosen tokens plus this many top alternatives
    prompt_logprobs: int | None = None  # the prompt's tokens' log probabilities too (completions `echo`)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_p: float = 0.0
    min_tokens: int = 0
    logit_bias: tuple[tuple[int, float], ...] = field(default_factory=tuple)  # (token id, bias in [-100, 100])
    structured: tuple[str, str] | None = None  # ("json_object", "") or ("json_schema", schema as JSON text)
    # vLLM extensions, with vLLM's meaning:
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)  # stop (like EOS) on any of these
    include_stop_str: bool = False  # keep the matched stop string at the end of the text
    skip_special_tokens: bool = True  # when decoding the text
    allowed_token_ids: tuple[int, ...] | None = None  # sample only among these

    def __post_init__(self) -> None:
        problems = []

        def num(v: object) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        least = 0 if self.prompt_logprobs is not None else 1  # 0: score the prompt only (echo)
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < least:
            problems.append(
                f"max_tokens must be an integer >= 1 (0 only with echo and logprobs), got {self.max_tokens!r}"
            )
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

        def integer(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not integer(self.n) or not 1 <= self.n <= MAX_N:
            problems.append(f"n must be an integer in [1, {MAX_N}], got {self.n!r}")
        if self.logprobs is not None and (not integer(self.logprobs) or not 0 <= self.logprobs <= MAX_LOGPROBS):
            problems.append(f"logprobs must be an integer in [0, {MAX_LOGPROBS}] or null, got {self.logprobs!r}")
        if self.prompt_logprobs is not None and (
            not integer(self.prompt_logprobs) or not 0 <= self.prompt_logprobs <= MAX_LOGPROBS
        ):
            problems.append(
                f"prompt_logprobs must be an integer in [0, {MAX_LOGPROBS}] or null, got {self.prompt_logprobs!r}"
            )
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not num(v) or not -2 <= v <= 2:
                problems.append(f"{name} must be in [-2, 2], got {v!r}")
        if not num(self.repetition_penalty) or not 0 < self.repetition_penalty <= 10:
            problems.append(f"repetition_penalty must be in (0, 10], got {self.repetition_penalty!r}")
        if not num(self.min_p) or not 0 <= self.min_p <= 1:
            problems.append(f"min_p must be in [0, 1], got {self.min_p!r}")
        if not integer(self.min_tokens) or self.min_tokens < 0:
            problems.append(f"min_tokens must be an integer >= 0, got {self.min_tokens!r}")
        elif integer(self.max_tokens) and self.max_tokens >= 0 and self.min_tokens > self.max_tokens:
            problems.append(f"min_tokens ({self.min_tokens}) must be <= max_tokens ({self.max_tokens})")
        bias = self.logit_bias
        if isinstance(bias, dict):
            bias = tuple(bias.items())
        try:
            bias = tuple((int(t), float(b)) for t, b in bias)
        except (TypeError, ValueError):
            problems.append(f"logit_bias must map token ids to numbers, got {str(self.logit_bias)[:200]!r}")
            bias = ()
        if len(bias) > MAX_LOGIT_BIAS or any(t < 0 or not -100 <= b <= 100 for t, b in bias):
            problems.append(f"logit_bias takes at most {MAX_LOGIT_BIAS} token ids >= 0 with biases in [-100, 100]")
        object.__setattr__(self, "logit_bias", bias)
        for name in ("stop_token_ids", "allowed_token_ids"):
            ids = getattr(self, name)
            if ids is None:
                continue
            if not isinstance(ids, (tuple, list)) or not all(integer(t) and t >= 0 for t in ids) or len(ids) > 4096:
                problems.append(f"{name} must be a list of at most 4096 token ids >= 0, got {str(ids)[:200]!r}")
            elif name == "allowed_token_ids" and not ids:
                problems.append("allowed_token_ids must not be empty (null = every token)")
            else:
                object.__setattr__(self, name, tuple(ids))
        for name in ("include_stop_str", "skip_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.structured is not None:
            st = tuple(self.structured)
            if len(st) != 2 or st[0] not in STRUCTURED or not isinstance(st[1], str):
                problems.append(f"structured must be one of {list(STRUCTURED)} with its schema, got {st!r}")
            object.__setattr__(self, "structured", st)
        if problems:
            raise SamplingError("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def check_chain(self) -> None:
        """A chain's stages feed each other: one answer, and no prompt to score."""
        if self.n > 1 or self.prompt_logprobs is not None:
            raise SamplingError("n > 1 and echo are not supported with chain compositions (stages feed each other)")

    def feeding_stage(self) -> SamplingParams:
        """A chain's earlier stages feed the next one: only the last is constrained to a format and scored."""
        return replace(self, structured=None, logprobs=None)

    @property
    def copies(self) -> int:
        """Rows decoded for the `n` choices: greedy choices are one answer n times, so one row serves them all."""
        return 1 if self.greedy else self.n


def sampling_payload(params: SamplingParams) -> dict:
    """`params` as plain JSON-able data (the ingress -> replica hop; `SamplingParams(**payload)` rebuilds it)."""
    out = {f.name: getattr(params, f.name) for f in fields(params)}
    out["stop"] = list(params.stop)
    out["logit_bias"] = [list(p) for p in params.logit_bias]
    out["structured"] = list(params.structured) if params.structured is not None else None
    out["stop_token_ids"] = list(params.stop_token_ids)
    out["allowed_token_ids"] = list(params.allowed_token_ids) if params.allowed_token_ids is not None else None
    return out


def choose_tokens(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> torch.Tensor:
    """One token per row of processed `logits: [rows, vocab]` (`experts.logits`). Greedy rows take the argmax;
    sampled rows are filtered together on the logits' device, in vLLM's order (temperature, top-k, min-p,
    top-p), and drawn by the exponential race (argmax of p / E, E ~ Exp(1): a draw from p) with one noise
    row per choice from its own generator, so seeded choices reproduce whatever shares their batch."""
    tokens = logits.argmax(dim=-1)  # [rows]
    picked = [i for i, p in enumerate(params) if not p.greedy]
    if not picked:
        return tokens
    ps = [params[i] for i in picked]
    dev, vocab = logits.device, logits.shape[-1]
    x = logits[picked].float()  # [sampled, vocab]
    x = x / torch.tensor([p.temperature for p in ps], device=dev)[:, None]
    ks = [p.top_k if 0 < p.top_k < vocab else vocab for p in ps]
    if min(ks) < vocab:
        kth = x.topk(max(ks), dim=-1).values.gather(1, torch.tensor(ks, device=dev)[:, None] - 1)  # [sampled, 1]
        x = x.masked_fill(x < kth, float("-inf"))
    if any(p.min_p > 0 for p in ps):
        probs = torch.softmax(x, dim=-1)
        floor = torch.tensor([p.min_p for p in ps], device=dev)[:, None] * probs.max(dim=-1, keepdim=True).values
        x = x.masked_fill(probs < floor, float("-inf"))
    probs = torch.softmax(x, dim=-1)  # [sampled, vocab]
    if any(p.top_p < 1.0 for p in ps):
        sorted_p, order = probs.sort(dim=-1, descending=True)
        top_p = torch.tensor([p.top_p for p in ps], device=dev)[:, None]
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the most likely token
        probs = probs * torch.zeros_like(keep).scatter(1, order, keep)
    noise = torch.empty(len(picked), vocab)  # on the CPU, where the generators live
    for j, i in enumerate(picked):
        noise[j].exponential_(generator=generators[i])
    tokens[picked] = (probs / noise.to(dev)).argmax(dim=-1)
    return tokens
