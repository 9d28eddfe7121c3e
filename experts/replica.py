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
from collections import Counter, deque
from concurrent.futures import Future

from loraplex.config.engine import EngineConfig
from loraplex.experts.adapters.store import quantiles
from loraplex.experts.choices import TokenCallback
from loraplex.experts.composition import adapters_of
from loraplex.experts.engine import Engine
from loraplex.experts.errors import LoraplexError, RequestError, as_error
from loraplex.experts.protocol import GenerationPayload, Outcome, count_outcome
from loraplex.experts.request import Request
from loraplex.experts.scheduler import Scheduler

log = logging.getLogger(__name__)

WAKE = None  # put into the inbox when an adapter load ends: parked requests can join now
STEP_SAMPLES = 256  # recent step times kept per (loads in flight?, batch size)
TOP_ADAPTERS = 64  # adapters whose request counts stats() reports


def _median(xs) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


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
        self.scheduler.on_ready = lambda: self._inbox.put(WAKE)
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
        # pure decode-step seconds by (what else happened during the step, batch size): do loads slow decoding?
        # "loading": an adapter load ran; "arrival": a request arrived (the replica's Serve thread took the GIL
        # to hand it over) but no load ran; "idle": neither. A cold request brings both an arrival and a load,
        # so a load's own cost is "loading" against "arrival".
        self._steps: dict[tuple[str, int], deque[float]] = {}
        self._submitted = 0
        self._by_adapter: Counter[str] = Counter()  # requests per adapter (placement: how a hot one splits)

    # ---- requests ----------------------------------------------------------------------------
    def submit(self, payload: GenerationPayload, on_token: TokenCallback | None = None) -> Future[Outcome]:
        """Queue one request; the future resolves to its `Result` or typed error."""
        fut: Future = Future()
        cancel = threading.Event()
        with self._lock:
            self._submitted += 1
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
            for name in adapters_of(req.composition):
                self._by_adapter[name] += 1
            if len(self._by_adapter) > 16 * TOP_ADAPTERS:  # bounded: keep the busiest
                self._by_adapter = Counter(dict(self._by_adapter.most_common(4 * TOP_ADAPTERS)))
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
        if not self.scheduler.runnable:
            idle = not self.scheduler.busy
            first = self._inbox.get()  # nothing to decode: sleep until a request comes or a load ends
            if idle and first is not WAKE and self.wait_s > 0:
                time.sleep(self.wait_s)
            self._accept(first)
        while True:
            try:
                self._accept(self._inbox.get_nowait())
            except queue.Empty:
                break
        if not self.scheduler.runnable:
            return
        store = self.engine.store
        loading, epoch, submitted = store.loads_in_flight > 0, store.load_epoch, self._submitted
        t0 = time.perf_counter()
        try:
            n = self.scheduler.step()
        except Exception as e:  # the model call failed (e.g. out of memory): everyone in flight gets the error
            log.exception("engine step failed; failing %d requests", self.scheduler.running + self.scheduler.waiting)
            n = 0
            self.scheduler.fail_all(as_error(e))
        dt = time.perf_counter() - t0
        kind = (
            "loading" if loading or store.load_epoch != epoch else "arrival" if self._submitted != submitted else "idle"
        )
        with self._lock:
            self.counters["batches"] += 1 if n else 0
            self.counters["rows"] += n
            self.counters["busy_s"] += dt
            self.last_batch_size = n
            if n and not self.scheduler.decoder.last_prefill:  # pure decode steps: do loads slow them?
                self._steps.setdefault((kind, n), deque(maxlen=STEP_SAMPLES)).append(dt)

    def _accept(self, item: tuple[Request, Future] | None) -> None:
        if item is WAKE:
            return
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
            steps = {f"{k[0]}:{k[1]}": (_median(v), len(v)) for k, v in self._steps.items()}
            return {
                **self.counters,
                "inflight": self.inflight,
                "pending": self.pending,
                "parked": self.scheduler.parked,
                "last_batch_size": self.last_batch_size,
                **{f"store_{k}": v for k, v in store.stats.as_dict().items()},
                "resident": list(store.resident()),
                "cached": store.cached(),
                "loading": store.loading(),
                "load_times_s": {**store.timings(), "request_wait": quantiles(self.scheduler.load_waits)},
                "step_s": {k: {"p50": m, "n": c} for k, (m, c) in sorted(steps.items())},
                "requests_by_adapter": dict(self._by_adapter.most_common(TOP_ADAPTERS)),
            }

    def routing_stats(self) -> dict:
        """What this replica holds, for the residency-aware request router (`gateway.placement`)."""
        store = self.engine.store
        return {"device": list(store.resident()), "host": store.cached(), "loading": store.loading()}

    def warm(self, adapter: str) -> None:
        """Load and validate an adapter into host memory (blocks; never call it from the engine thread)."""
        self.engine.store.get(adapter)

    def check_health(self) -> None:
        if self._worker is not None and not self._worker.is_alive():
            raise RuntimeError("the engine worker thread is not running")

    def close(self) -> None:
        """Stops the adapter loader; the worker thread is a daemon."""
        self.engine.close()
