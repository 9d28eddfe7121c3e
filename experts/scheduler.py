"""Continuous batching over one Engine: requests, and the stages of chains, join the running batch between decode steps.

Admission is FIFO. The head of the queue joins when its adapters fit the device slots next to the
adapters of the rows already decoding (those slots are leased: the store may not evict them while a row
reads them) and its virtual rows fit `max_batch_rows`. Nobody overtakes a waiting head, so a wide
composition cannot starve behind a stream of small ones; `Engine.check` already refused anything that
could never fit. A chain's next stage goes back to the head of the queue when its previous stage ends.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from loraplex.experts.composition import Base, Chain, Composition, Single, adapters_of, weight_rows
from loraplex.experts.engine import Engine, Request, Result
from loraplex.experts.errors import LoraplexError
from loraplex.experts.decoder import Decoder, GenItem, GenOutput, TokenCallback

Done = Callable[[Result | LoraplexError], None]


@dataclass
class _Work:
    request: Request
    done: Done
    ids: list[int] | None  # token ids of the current stage's prompt (None: encode at admission)
    stage: int = 0
    texts: list[str] = field(default_factory=list)  # outputs of the finished stages


class Scheduler:
    def __init__(self, engine: Engine, max_requests: int):
        self.engine = engine
        self.max_requests = max_requests  # requests decoding at once (the group's max_batch_size)
        self.decoder = Decoder(engine.wrapped, engine.tokenizer, engine.eos_ids, engine.pad_id)
        self._waiting: deque[_Work] = deque()
        self._running: dict[int, tuple[_Work, set[str]]] = {}  # id(GenItem) -> (work, adapters its rows read)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def busy(self) -> bool:
        return bool(self._waiting or self._running)

    def add(self, request: Request, done: Done) -> None:
        """Queue a request; `done` gets its `Result` or `LoraplexError` (at once, if the request is invalid)."""
        try:
            ids = self.engine.check(request)
        except LoraplexError as e:
            done(e)
            return
        self._waiting.append(_Work(request, done, ids))

    def step(self) -> int:
        """Admit what fits, then one decode step of the running batch; returns how many requests it decoded."""
        for item, out in self.decoder.step(self._admit()):
            self._finish(item, out)
        return self.decoder.last_size

    def fail_all(self, error: Exception) -> None:
        """The model call itself failed: every queued and running request gets `error`, the batch starts empty."""
        works = [w for w, _ in self._running.values()] + list(self._waiting)
        self._running.clear()
        self._waiting.clear()
        self.decoder.clear()
        for w in works:
            w.done(error)  # type: ignore[arg-type]

    # ---- internals ---------------------------------------------------------------------------
    def _stage(self, w: _Work) -> tuple[Composition, str | list[int], TokenCallback | None]:
        req = w.request
        if isinstance(req.composition, Chain):
            stages = req.composition.stages
            st = stages[w.stage]
            comp: Composition = Single(st.adapter) if st.adapter else Base()
            return comp, st.render(req.prompt, w.texts[-1] if w.texts else ""), req.on_token if w.stage == len(stages) - 1 else None
        return req.composition, req.prompt, req.on_token

    def _admit(self) -> list[GenItem]:
        if self._running and not self.decoder.can_join:
            return []
        cfg = self.engine.config
        leased = {n for _, names in self._running.values() for n in names}
        rows = self.decoder.num_rows
        items: list[GenItem] = []
        while self._waiting and len(self._running) < self.max_requests:
            w = self._waiting[0]
            cancel = w.request.cancel
            if cancel is not None and cancel.is_set():  # client left while queued
                self._waiting.popleft()
                w.done(Result("", "cancelled", len(w.ids or []), 0, w.texts))
                continue
            comp, prompt, on_token = self._stage(w)
            need = set(adapters_of(comp))
            wrows, mix = weight_rows(comp)
            if len(leased | need) > cfg.max_slots or rows + len(wrows) > cfg.max_batch_rows:
                break  # waits for rows to finish; FIFO, nobody overtakes it
            self._waiting.popleft()
            try:
                ids = w.ids if w.ids is not None else self.engine._encode(prompt, w.request.params.max_tokens)
                slots = self.engine.store.acquire(need, keep=leased)
            except LoraplexError as e:  # e.g. a chain stage grew past the context, or an adapter failed validation
                w.done(e)
                continue
            w.ids = None
            item = GenItem(ids, [{slots[n]: wt for n, wt in r.items()} for r in wrows], mix, w.request.params, on_token,
                           cancel.is_set if cancel is not None else None)
            self._running[id(item)] = (w, need)
            leased |= need
            rows += len(wrows)
            items.append(item)
        return items

    def _finish(self, item: GenItem, out: GenOutput) -> None:
        w, _ = self._running.pop(id(item))
        w.texts.append(out.text)
        comp = w.request.composition
        if isinstance(comp, Chain) and w.stage + 1 < len(comp.stages) and out.finish_reason != "cancelled":
            w.stage += 1
            self._waiting.appendleft(w)
            return
        w.done(Result(out.text, out.finish_reason, out.prompt_tokens, out.completion_tokens, w.texts if len(w.texts) > 1 else []))
