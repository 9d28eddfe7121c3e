"""What a native expert replica does, without Serve: payloads in, continuous batching on one worker thread,
typed outcomes out.

The Serve deployment (`deployments/expert.py`) hands payloads to `submit` and awaits the returned
future; unit tests build this class directly. One worker thread owns the engine (its LoRA context and
KV cache are shared state) and drives `experts.scheduler.Scheduler`: new requests join the running
batch between decode steps, finished ones answer at once. Every request is answered with a `Result`
or a typed `LoraplexError` value, whatever fails (a bad request, a tokenizer exception, the model
call): one bad request never fails the others, and the worker thread never dies.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future

from loraplex.config.engine import EngineConfig
from loraplex.experts.choices import TokenCallback
from loraplex.experts.engine import Engine
from loraplex.experts.errors import LoraplexError, RequestError, as_error
from loraplex.experts.protocol import GenerationPayload, Outcome, count_outcome
from loraplex.experts.request import Request
from loraplex.experts.scheduler import Scheduler

log = logging.getLogger(__name__)


class NativeReplica:
    """The `ServingEngine` of our own engine (see `experts.protocol`)."""

    def __init__(
        self,
        config: EngineConfig,
        pinned: list[str],
        engine: Engine | None = None,
        max_batch_size: int = 32,
        wait_s: float = 0.0,
    ):
        self.engine = engine or Engine.from_config(config)
        self.pinned = list(pinned)
        if self.pinned:
            self.engine.store.acquire(
                self.pinned
            )  # validate + load at start: a broken adapter fails the deploy, loudly
        self.scheduler = Scheduler(self.engine, max_batch_size)
        self.wait_s = wait_s  # after an idle period, how long the first request waits for company before its prefill
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()  # counters, worker start, cancel events
        self._cancels: dict[int, threading.Event] = {}  # id(future) -> its request's cancel event
        self.counters = {
            "requests": 0,
            "errors": 0,
            "cancelled": 0,
            "batches": 0,
            "rows": 0,
            "tokens": 0,
            "busy_s": 0.0,
        }
        self.inflight = 0  # accepted, not answered yet (queued or decoding)
        self.last_batch_size = 0  # requests in the last decode step

    # ---- requests ----------------------------------------------------------------------------
    def submit(self, payload: GenerationPayload, on_token: TokenCallback | None = None) -> Future[Outcome]:
        """Queue one request; the future resolves to its `Result` or typed error."""
        fut: Future = Future()
        cancel = threading.Event()
        with self._lock:
            self.inflight += 1
            self._cancels[id(fut)] = cancel
        try:
            req = Request.from_json(
                payload["prompt"],
                payload.get("composition"),
                on_token=on_token,
                cancel=cancel,
                request_id=payload.get("request_id"),
                **payload.get("sampling", {}),
            )
        except LoraplexError as e:
            self._answer(fut, e)
            return fut
        except (TypeError, KeyError) as e:  # an unknown sampling key or a missing field from a client of this class
            self._answer(fut, RequestError(f"invalid generation payload: {e}"))
            return fut
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._loop, name="loraplex-engine", daemon=True)
                self._worker.start()
        self._inbox.put((req, fut))
        return fut

    def cancel(self, future: Future) -> None:
        with self._lock:
            event = self._cancels.get(id(future))
        if event is not None:
            event.set()  # the engine drops the row at its next step, or skips it if still queued

    @property
    def pending(self) -> int:
        """Requests accepted but not decoding yet."""
        return self._inbox.qsize() + self.scheduler.waiting

    # ---- the worker ------------------------------------------------------------------------------
    def _loop(self) -> None:
        self.engine.bind_threads()  # OpenMP's thread count is per calling thread: set it in the one that computes
        while True:
            try:
                self._turn()
            except Exception:  # a bug outside the model call: log it, answer what it concerned, keep serving
                log.exception(
                    "engine worker iteration failed; failing %d requests",
                    self.scheduler.running + self.scheduler.waiting,
                )
                self.scheduler.fail_all(as_error(RuntimeError("engine worker failed; see the replica log")))

    def _turn(self) -> None:
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
            return
        t0 = time.perf_counter()
        try:
            n = self.scheduler.step()
        except Exception as e:  # the model call failed (e.g. out of memory): everyone in flight gets the error
            log.exception("engine step failed; failing %d requests", self.scheduler.running + self.scheduler.waiting)
            n = 0
            self.scheduler.fail_all(as_error(e))
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
                self._cancels.pop(id(fut), None)
                self.counters["requests"] += 1
                self.counters["cancelled"] += 1
            return
        try:
            self.scheduler.add(req, lambda res: self._answer(fut, res))
        except Exception as e:  # a bug in admission bookkeeping: this request fails, the worker goes on
            log.exception("admitting a request failed")
            self._answer(fut, as_error(e))

    def _answer(self, fut: Future, res: Outcome) -> None:
        with self._lock:
            self.inflight -= 1
            self._cancels.pop(id(fut), None)
            count_outcome(self.counters, res)
        if not fut.done():
            fut.set_result(res)

    # ---- introspection ---------------------------------------------------------------------------
    def stats(self) -> dict:
        store = self.engine.store
        with self._lock:
            return {
                **self.counters,
                "inflight": self.inflight,
                "pending": self.pending,
                "last_batch_size": self.last_batch_size,
                **{f"store_{k}": v for k, v in store.stats.as_dict().items()},
                "resident": list(store.resident()),
            }

    def warm(self, adapter: str) -> None:
        """Load and validate an adapter into host memory (the multiplexing loader calls this)."""
        self.engine.store.get(adapter)

    def check_health(self) -> None:
        if self._worker is not None and not self._worker.is_alive():
            raise RuntimeError("the engine worker thread is not running")

    def close(self) -> None:
        """Nothing outside this process to release: the worker thread is a daemon."""
