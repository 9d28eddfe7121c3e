"""What an expert replica does, without Serve: wire payloads in, one engine call per batch, wire results out.

The Serve deployment (`deployments/expert.py`) only gathers payloads with `@serve.batch` and calls
`run_batch` in a worker thread; unit tests build this class directly. Errors come back as data
(`{"error": {...}}`) per request so one bad request never fails its batch.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from config.engine import EngineConfig
from experts.engine import Engine, Request
from experts.errors import LoraplexError

Payload = dict[str, Any]  # {"prompt": str | [int], "composition": spec | None, "sampling": {...}, "on_token": callable?, "cancel": Event?}


def error_payload(e: Exception) -> dict:
    return {"error": {"type": type(e).__name__, "message": str(e)}}


class ExpertServer:
    def __init__(self, config: EngineConfig, pinned: list[str], engine: Engine | None = None):
        self.engine = engine or Engine.from_config(config)
        self.pinned = list(pinned)
        if self.pinned:
            self.engine.store.acquire(self.pinned)  # validate + load at start: a broken adapter fails the deploy, loudly
        self._lock = threading.Lock()  # counters
        self._engine_lock = threading.Lock()  # the engine's LoRA context is shared: calls must never overlap
        self.counters = {"requests": 0, "errors": 0, "cancelled": 0, "batches": 0, "rows": 0, "tokens": 0, "busy_s": 0.0}
        self.inflight = 0
        self.last_batch_size = 0

    def run_batch(self, payloads: list[Payload]) -> list[dict]:
        """One engine call for the whole batch; returns one result or error dict per payload."""
        requests: list[Request | None] = []
        results: list[dict | None] = [None] * len(payloads)
        for i, p in enumerate(payloads):
            try:
                requests.append(Request.from_json(p["prompt"], p.get("composition"), on_token=p.get("on_token"), cancel=p.get("cancel"), **p.get("sampling", {})))
            except LoraplexError as e:
                requests.append(None)
                results[i] = error_payload(e)
            except TypeError as e:  # unknown sampling key from a client of this class
                requests.append(None)
                results[i] = error_payload(ValueError(str(e)))
        todo = [i for i, r in enumerate(requests) if r is not None]
        with self._lock:
            self.inflight += len(payloads)
            self.last_batch_size = len(payloads)
        t0 = time.perf_counter()
        try:
            with self._engine_lock:
                outs = self.engine.generate_many([requests[i] for i in todo])
        finally:
            with self._lock:
                self.inflight -= len(payloads)
        for i, out in zip(todo, outs):
            if isinstance(out, Exception):
                results[i] = error_payload(out)
            else:
                results[i] = {"text": out.text, "finish_reason": out.finish_reason, "prompt_tokens": out.prompt_tokens,
                              "completion_tokens": out.completion_tokens, "stages": out.stages}
        with self._lock:
            c = self.counters
            c["requests"] += len(payloads)
            c["errors"] += sum("error" in r for r in results)
            c["cancelled"] += sum(r.get("finish_reason") == "cancelled" for r in results)
            c["batches"] += 1
            c["rows"] += len(todo)
            c["tokens"] += sum(r.get("completion_tokens", 0) for r in results)
            c["busy_s"] += time.perf_counter() - t0
        return results  # type: ignore[return-value]

    def stats(self) -> dict:
        with self._lock:
            return {**self.counters, "inflight": self.inflight, "last_batch_size": self.last_batch_size, **{f"store_{k}": v for k, v in self.engine.store.stats.as_dict().items()},
                    "resident": list(self.engine.store.resident())}

    def warm(self, name: str):
        """Load and validate an adapter into host memory (the multiplexing loader calls this)."""
        return self.engine.store.get(name)
