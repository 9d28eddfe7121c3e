"""Continuous batching over one engine: requests, and the stages of chains, join the running batch between decode steps.

Admission is FIFO. The head of the queue joins when its virtual rows fit `max_batch_rows` and the
adapter store can lease it slots next to the slots the running rows hold (leases live in the store,
which never rewrites a leased slot). Nobody overtakes a waiting head, so a wide composition cannot
starve behind a stream of small ones; `check` already refused anything that could never fit. A chain's
next stage goes back to the head of the queue when its previous stage ends.

The one exception is a cold adapter: a request whose adapter is still loading from disk (on the store's
loader thread) is parked, holding no batch row and no slot, while the requests behind it go on; when
its loads finish it goes back to the head of the queue, or answers the load's error.

The scheduler knows the engine only through `BatchEngine` (the engine imports the scheduler, not the
other way round).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Protocol

from loraplex.experts.adapters.store import AdapterLoading, Lease
from loraplex.experts.choices import GenItem, GenOutput, TokenCallback
from loraplex.experts.composition import Base, Chain, Composition, Single, adapters_of, weight_rows
from loraplex.experts.errors import CapacityError, LoraplexError, as_error
from loraplex.experts.request import Choice, Request, Result, Timing
from loraplex.experts.sampling import SamplingParams

Done = Callable[[Result | LoraplexError], None]


class BatchDecoder(Protocol):
    """A running batch (`experts.decoder.Decoder`, `experts.hf_decoder.HFDecoder`)."""

    can_join: bool
    last_size: int
    last_prefill: int
    num_rows: int

    def step(self, joining: list[GenItem]) -> list[tuple[GenItem, list[GenOutput]]]: ...

    def clear(self) -> None: ...

    def __len__(self) -> int: ...


class BatchEngine(Protocol):
    """What the scheduler needs from an engine (`experts.engine.Engine`)."""

    max_batch_rows: int

    def check(self, request: Request) -> list[int]: ...

    def encode(self, prompt: str | list[int], max_tokens: int) -> list[int]: ...

    def lease(self, adapters: Iterable[str]) -> Lease: ...

    def release(self, lease: Lease) -> None: ...

    def new_decoder(self) -> BatchDecoder: ...


@dataclass
class _Work:
    request: Request
    done: Done
    ids: list[int] | None  # token ids of the current stage's prompt (None: encode at admission)
    stage: int = 0
    texts: list[str] = field(default_factory=list)  # outputs of the finished stages
    prompt_tokens: int = 0  # summed over finished stages
    completion_tokens: int = 0
    joined_at: float | None = None  # when its first stage got batch rows
    parked_at: float | None = None  # when it started waiting for an adapter load


class Scheduler:
    def __init__(self, engine: BatchEngine, max_requests: int):
        self.engine = engine
        self.max_requests = max_requests  # requests decoding at once (the group's max_batch_size)
        self.decoder = engine.new_decoder()
        self._waiting: deque[_Work] = deque()
        self._running: dict[int, tuple[_Work, Lease]] = {}  # id(GenItem) -> (work, slots its rows read)
        self._parked: list[tuple[_Work, list[Future]]] = []  # waiting for adapter loads, in arrival order
        self.on_ready: Callable[[], None] | None = None  # called (from the loader thread) when a load ends
        self.load_waits: deque[float] = deque(maxlen=2048)  # seconds parked requests waited for their loads

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def parked(self) -> int:
        return len(self._parked)

    @property
    def busy(self) -> bool:
        return bool(self._waiting or self._running or self._parked)

    @property
    def runnable(self) -> bool:
        """Work for `step` now: requests waiting for rows, running rows, or parked ones whose loads ended."""
        return bool(self._waiting or self._running or any(all(f.done() for f in fs) for _, fs in self._parked))

    def wait_for_loads(self, timeout: float | None = None) -> None:
        """Block until some parked request's loads end (callers with nothing else to do)."""
        futures = [f for _, fs in self._parked for f in fs]
        if futures:
            wait_futures(futures, timeout, return_when=FIRST_COMPLETED)

    def add(self, request: Request, done: Done) -> None:
        """Queue a request; `done` gets its `Result` or `LoraplexError` (at once, if the request is invalid).
        Never raises: whatever the check throws answers this request only."""
        try:
            ids = self.engine.check(request)
        except Exception as e:
            done(as_error(e))
            return
        self._waiting.append(_Work(request, done, ids))

    def step(self) -> int:
        """Admit what fits, then one decode step of the running batch; returns how many choices it decoded."""
        self._unpark()
        joining = self._admit()
        if not joining and not self._running:
            return 0
        for item, outs in self.decoder.step(joining):
            self._finish(item, outs)
        return self.decoder.last_size

    def fail_all(self, error: LoraplexError) -> None:
        """The model call itself failed: every queued and running request gets `error`, the batch starts empty."""
        running = list(self._running.values())
        works = [w for w, _ in running] + list(self._waiting) + [w for w, _ in self._parked]
        self._running.clear()
        self._waiting.clear()
        self._parked.clear()
        self.decoder.clear()
        for _, lease in running:
            self.engine.release(lease)
        for w in works:
            w.done(error)

    # ---- internals ---------------------------------------------------------------------------
    def _park(self, w: _Work, futures: list[Future]) -> None:
        w.parked_at = time.perf_counter()
        self._parked.append((w, futures))
        for f in futures:
            if self.on_ready is not None:
                f.add_done_callback(lambda _f: self.on_ready())

    def _unpark(self) -> None:
        """Parked requests whose loads ended go back to the head of the queue in arrival order (or answer
        the load's error); cancelled ones answer at once."""
        back: list[_Work] = []
        still: list[tuple[_Work, list[Future]]] = []
        for w, futures in self._parked:
            cancel = w.request.cancel
            if cancel is not None and cancel.is_set():
                w.done(Result("", "cancelled", w.prompt_tokens, w.completion_tokens, w.texts))
            elif not all(f.done() for f in futures):
                still.append((w, futures))
            else:
                self.load_waits.append(time.perf_counter() - (w.parked_at or time.perf_counter()))
                failed = next((f.exception() for f in futures if f.exception() is not None), None)
                if failed is not None:
                    w.done(as_error(failed))  # every request waiting on a failed load gets its error
                else:
                    back.append(w)
        self._parked = still
        self._waiting.extendleft(reversed(back))

    def _stage(self, w: _Work) -> tuple[Composition, str | list[int], SamplingParams, TokenCallback | None]:
        """The current stage's composition, prompt, sampling and stream callback. A chain's earlier stages feed
        the next one: only the last is streamed, constrained to a response format and scored."""
        req = w.request
        if isinstance(req.composition, Chain):
            stages = req.composition.stages
            st = stages[w.stage]
            comp: Composition = Single(st.adapter) if st.adapter else Base()
            last = w.stage == len(stages) - 1
            prompt = st.render(req.prompt, w.texts[-1] if w.texts else "")
            if last:
                return comp, prompt, req.params, req.on_token
            return comp, prompt, req.params.feeding_stage(), None
        return req.composition, req.prompt, req.params, req.on_token

    def _admit(self) -> list[GenItem]:
        if self._running and not self.decoder.can_join:
            return []
        rows = self.decoder.num_rows
        items: list[GenItem] = []
        while self._waiting and len(self._running) < self.max_requests:
            w = self._waiting[0]
            cancel = w.request.cancel
            if cancel is not None and cancel.is_set():  # client left while queued
                self._waiting.popleft()
                w.done(Result("", "cancelled", w.prompt_tokens, w.completion_tokens, w.texts))
                continue
            comp, prompt, params, on_token = self._stage(w)
            wrows, mix = weight_rows(comp)
            need = len(wrows) * params.copies  # one row set per sampled choice
            if rows + need > self.engine.max_batch_rows:
                break  # waits for rows to finish; FIFO, nobody overtakes it
            try:
                if w.ids is None:  # e.g. a chain stage: it may have grown past the context
                    w.ids = self.engine.encode(prompt, w.request.params.max_tokens)
                lease = self.engine.lease(adapters_of(comp))
            except AdapterLoading as e:  # cold adapter: wait off the batch, let the requests behind it go on
                self._waiting.popleft()
                self._park(w, e.futures)
                continue
            except CapacityError as e:
                if self._running or items:
                    break  # its adapters fit once running rows release their slots
                self._waiting.popleft()  # nothing holds a slot and it still does not fit: never wait forever
                w.done(e)
                continue
            except Exception as e:  # e.g. an adapter removed or failing validation: this request only
                self._waiting.popleft()
                w.done(as_error(e))
                continue
            self._waiting.popleft()
            ids, w.ids = w.ids, None
            slot_rows = [{lease.slots[n]: wt for n, wt in r.items()} for r in wrows]
            cancelled = cancel.is_set if cancel is not None else None
            item = GenItem(ids, slot_rows, mix, params, on_token, cancelled)
            self._running[id(item)] = (w, lease)
            rows += need
            items.append(item)
        return items

    def _finish(self, item: GenItem, outs: list[GenOutput]) -> None:
        w, lease = self._running.pop(id(item))
        self.engine.release(lease)
        out = outs[0]
        w.joined_at = out.joined_at if w.joined_at is None else w.joined_at
        w.texts.append(out.text)
        w.prompt_tokens += out.prompt_tokens
        w.completion_tokens += sum(o.completion_tokens for o in outs)
        comp = w.request.composition
        if isinstance(comp, Chain) and w.stage + 1 < len(comp.stages) and out.finish_reason != "cancelled":
            w.stage += 1
            self._waiting.appendleft(w)
            return
        stages = w.texts if len(w.texts) > 1 else []
        more = [Choice(o.text, o.finish_reason, list(o.token_ids), o.logprobs) for o in outs[1:]]
        w.done(
            Result(
                out.text,
                out.finish_reason,
                w.prompt_tokens,
                w.completion_tokens,
                stages,
                list(out.token_ids),
                out.logprobs,
                more,
                out.prompt_logprobs,
                self._timing(w, out),
            )
        )

    @staticmethod
    def _timing(w: _Work, out: GenOutput) -> Timing:
        """From arrival: the wait for rows, the first visible token (the last stage's), and the gaps between."""
        t0, times = w.request.arrival, out.token_times
        gaps = [b - a for a, b in zip(times, times[1:])]
        return Timing(w.joined_at - t0, times[0] - t0 if times else None, time.perf_counter() - t0, gaps)
