"""What an expert replica does, without Serve: wire payloads in, continuous batching on one worker thread, wire results out.

The Serve deployment (`deployments/expert.py`) only hands payloads to `submit` and awaits the returned
future; unit tests build this class directly. One worker thread owns the engine (its LoRA context and
KV cache are shared state) and drives `loraplex.experts.scheduler.Scheduler`: new requests join the running
batch between decode steps, finished ones answer at once. Errors come back as data
(`{"error": {...}}`) per request, so one bad request never fails the others.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any

from loraplex.config.engine import EngineConfig
from loraplex.experts.engine import Engine, Request, Result
from loraplex.experts.errors import LoraplexError
from loraplex.experts.scheduler import Scheduler

log = logging.getLogger(__name__)

Payload = dict[str, Any]  # {"prompt": str | [int], "composition": spec | None, "sampling": {...}, "on_token": callable?, "cancel": Event?}


def error_payload(e: Exception) -> dict:
    return {"error": {"type": type(e).__name__, "message": str(e)}}


class ExpertServer:
    def __init__(self, config: EngineConfig, pinned: list[str], engine: Engine | None = None, max_batch_size: int = 32, wait_s: float = 0.0):
        self.engine = engine or Engine.from_config(config)
        self.pinned = list(pinned)
        if self.pinned:
            self.engine.store.acquire(self.pinned)  # validate + load at start: a broken adapter fails the deploy, loudly
        self.scheduler = Scheduler(self.engine, max_batch_size)
        self.wait_s = wait_s  # after an idle period, how long the first request waits for company before its prefill
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()  # counters, worker start
        self.counters = {"requests": 0, "errors": 0, "cancelled": 0, "batches": 0, "rows": 0, "tokens": 0, "busy_s": 0.0}
        self.inflight = 0  # accepted, not answered yet (queued or decoding)
        self.last_batch_size = 0  # requests in the last decode step

    # ---- requests ----------------------------------------------------------------------------
    def submit(self, payload: Payload) -> Future:
        """Queue one request; the future resolves to its result or error dict."""
        fut: Future = Future()
        try:
            req = Request.from_json(payload["prompt"], payload.get("composition"), on_token=payload.get("on_token"), cancel=payload.get("cancel"),
                                    **payload.get("sampling", {}))
        except (LoraplexError, TypeError) as e:  # TypeError: an unknown sampling key from a client of this class
            with self._lock:
                self.inflight += 1
            self._answer(fut, e if isinstance(e, LoraplexError) else ValueError(str(e)))
            return fut
        with self._lock:
            self.inflight += 1
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._loop, name="loraplex-engine", daemon=True)
                self._worker.start()
        self._inbox.put((req, fut))
        return fut

    def run_batch(self, payloads: list[Payload]) -> list[dict]:
        """Submit all and wait (blocking): one result or error dict per payload."""
        return [f.result() for f in [self.submit(p) for p in payloads]]

    @property
    def pending(self) -> int:
        """Requests accepted but not decoding yet."""
        return self._inbox.qsize() + self.scheduler.waiting

    # ---- the worker ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            if not self.scheduler.busy:
                first = self._inbox.get()  # idle: sleep until a request comes
                if self.wait_s > 0:
                    time.sleep(self.wait_s)
                self._accept(first)
            while True:
                try:
                    self._accept(self._inbox.get_nowait())
                except queue.Empty:
                    break
            if not self.scheduler.busy:
                continue
            t0 = time.perf_counter()
            try:
                n = self.scheduler.step()
            except Exception as e:  # the model call failed (e.g. out of memory): everyone in flight gets the error, the worker goes on
                log.exception("engine step failed; failing %d requests", self.scheduler.running + self.scheduler.waiting)
                n = 0
                self.scheduler.fail_all(e)
            with self._lock:
                self.counters["batches"] += 1 if n else 0
                self.counters["rows"] += n
                self.counters["busy_s"] += time.perf_counter() - t0
                self.last_batch_size = n

    def _accept(self, item: tuple[Request, Future]) -> None:
        req, fut = item
        if not fut.set_running_or_notify_cancel():  # the caller gave up while it was queued
            with self._lock:
                self.inflight -= 1
                self.counters["requests"] += 1
                self.counters["cancelled"] += 1
            return
        self.scheduler.add(req, lambda res: self._answer(fut, res))

    def _answer(self, fut: Future, res: Result | Exception) -> None:
        if isinstance(res, Result):
            out = {"text": res.text, "finish_reason": res.finish_reason, "prompt_tokens": res.prompt_tokens,
                   "completion_tokens": res.completion_tokens, "stages": res.stages}
        else:
            out = error_payload(res)
        with self._lock:
            c = self.counters
            self.inflight -= 1
            c["requests"] += 1
            c["errors"] += "error" in out
            c["cancelled"] += out.get("finish_reason") == "cancelled"
            c["tokens"] += out.get("completion_tokens", 0)
        fut.set_result(out)  # running (accepted) or fresh (refused in submit): never cancelled here

    # ---- introspection ---------------------------------------------------------------------------
    def stats(self) -> dict:
        with self._lock:
            return {**self.counters, "inflight": self.inflight, "pending": self.pending, "last_batch_size": self.last_batch_size,
                    **{f"store_{k}": v for k, v in self.engine.store.stats.as_dict().items()}, "resident": list(self.engine.store.resident())}

    def warm(self, name: str):
        """Load and validate an adapter into host memory (the multiplexing loader calls this)."""
        return self.engine.store.get(name)
