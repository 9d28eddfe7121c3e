"""What goes into the engine and what comes out: one `Request` per generation, one `Result` per answer."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from loraplex.experts.composition import Base, Composition, parse_composition
from loraplex.experts.decoder import TokenCallback
from loraplex.experts.sampling import SamplingParams


@dataclass
class Request:
    prompt: str | list[int]  # text, or token ids (OpenAI completions accept both)
    composition: Composition = field(default_factory=Base)
    params: SamplingParams = field(default_factory=SamplingParams)
    on_token: TokenCallback | None = None
    cancel: threading.Event | None = None  # set it (e.g. the client went away) to stop this request's decoding

    @classmethod
    def from_json(
        cls,
        prompt: str | list[int],
        composition: object = None,
        on_token: TokenCallback | None = None,
        cancel: threading.Event | None = None,
        **sampling: object,
    ) -> Request:
        return cls(prompt, parse_composition(composition), SamplingParams(**sampling), on_token, cancel)  # type: ignore[arg-type]


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

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
