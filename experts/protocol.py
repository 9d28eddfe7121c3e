"""The engine protocol: what an expert deployment drives, whichever engine runs underneath.

The Serve deployment (`deployments/expert.py`) only translates Serve calls into these methods, so a
second engine (e.g. one backed by vLLM) plugs in by implementing them; the native one is
`experts.replica.NativeReplica`.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, NotRequired, Protocol, TypedDict

from loraplex.experts.choices import TokenCallback
from loraplex.experts.errors import LoraplexError
from loraplex.experts.request import Result


class GenerationPayload(TypedDict):
    """One request as it crosses the ingress -> replica hop (plain data: the ingress never imports torch models)."""

    prompt: str | list[int]
    composition: Any  # the engine's composition spec (JSON), or None for the base model
    sampling: dict[str, Any]  # SamplingParams fields
    request_id: NotRequired[str]  # the client's request id (logs, vLLM's request ids)


Outcome = Result | LoraplexError  # what a replica answers: a typed value either way, never a dict with a class name


def count_outcome(counters: dict, res: Outcome) -> None:
    """The per-replica counters both engines keep (requests, cancelled, tokens, errors), for one answer."""
    counters["requests"] += 1
    if isinstance(res, Result):
        counters["cancelled"] += res.finish_reason == "cancelled"
        counters["tokens"] += res.completion_tokens
    else:
        counters["errors"] += 1


class ServingEngine(Protocol):
    def submit(self, payload: GenerationPayload, on_token: TokenCallback | None = None) -> Future[Outcome]:
        """Queue one request; the future resolves to its `Result` or its typed error (it never raises)."""
        ...

    def cancel(self, future: Future) -> None:
        """The caller went away: stop the request at the next decode step (a no-op once answered)."""
        ...

    def warm(self, adapter: str) -> None:
        """Load and validate an adapter ahead of its requests (replica affinity); raises its typed error."""
        ...

    def routing_stats(self) -> dict[str, list[str]]:
        """`{"device": [...], "host": [...], "loading": [...]}`: the adapters this replica holds, for placement."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counters for metrics and autoscaling: requests, errors, inflight, last_batch_size, tokens, store_*."""
        ...

    def check_health(self) -> None:
        """Raise if the replica cannot serve (Serve restarts it)."""
        ...

    def close(self) -> None:
        """Release what the engine holds outside this process (vLLM: its EngineCore process, cache folders)."""
        ...
