"""Continuous batching with chunked prefill: joining prompts are prefilled inside the running rows' decode step.

Why not HF `generate`: a batch here mixes sampling settings, stop strings and composition modes per
row, and a logits-space blend needs several *virtual rows* (base + one per adapter) whose logits are
mixed into one token each step. Why continuous: with static batches a request that arrives while a
batch decodes waits for the whole batch, so under load p99 is about two batch times.

Every step is one forward (`experts.forward.PackedForward`) over one token per running row plus up to
`prefill_tokens` prompt tokens of joining requests, taken in arrival order and split into chunks where
the budget ends. So a joining prompt never gets a forward of its own that stalls the running rows, and a
long prompt is spread over several steps. Each virtual row holds one row of the preallocated KV cache
from its first prompt token to its last sampled token: joining and leaving are index updates, never
cache copies. A request joins the sampling set when its whole prompt is in the cache, in the step whose
forward finished it (so its first token comes from that step).

A request with `n` sampled choices is prefilled once; when its prompt is done, the cache rows of its
other choices get a copy of the prompt's keys and values (the only copy, once per such request). Prompts
to be scored (`prompt_logprobs`, completions `echo`) keep every position's logits, chunk by chunk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from loraplex.experts.choices import (
    ChoiceState,
    Finished,
    GenItem,
    GenOutput,
    new_choices,
    row_layout,
    sample_step,
)
from loraplex.experts.forward import Chunk, PackedForward, StepBatch
from loraplex.experts.logprobs import prompt_logprobs
from loraplex.experts.lora.layers import LoraBatch, PackedLora, WrappedModel
from loraplex.experts.structured import GrammarBook


@dataclass
class _Row:
    """A virtual row of the running batch: its KV cache row, its slot weights, and how many tokens it holds."""

    cache_row: int
    slots: dict[int, float]
    length: int = 0


@dataclass
class _Joining:
    """A request being prefilled: one cache row per virtual row, plus the rows its other choices will copy."""

    item: GenItem
    rows: list[_Row]  # the prompt's virtual rows (choice 0)
    copies: list[list[int]]  # per further choice: a cache row for each virtual row
    joined_at: float
    logits: list[torch.Tensor | None] = field(init=False)  # per virtual row: last-token logits [vocab]
    scored: list[list[torch.Tensor]] = field(init=False)  # per virtual row: every position's logits

    def __post_init__(self) -> None:
        self.logits = [None] * len(self.rows)
        self.scored = [[] for _ in self.rows]

    @property
    def done(self) -> bool:
        n = len(self.item.prompt_ids)
        return all(r.length == n for r in self.rows)


class Decoder:
    """One running batch that requests join between decode steps and leave as they finish.

    `step(joining)` queues the joining items, runs one forward (the running rows' decode tokens and a
    budget of prompt tokens), samples one token for every active choice and drops the finished ones; it
    returns the items whose choices have all finished, with one output per choice (`params.n`). The caller
    owns admission (slots, row budget: `num_rows` counts queued prompts too): rows hold slot indices, so
    the slots of running rows must not be rewritten (`loraplex.experts.scheduler.Scheduler` leases them).
    """

    def __init__(
        self,
        wrapped: WrappedModel,
        tokenizer,
        eos_ids: set[int],
        rows: int,
        prefill_tokens: int,
        grammars: GrammarBook | None = None,
        compile: bool = False,
    ):
        self.wrapped, self.tokenizer, self.eos_ids = wrapped, tokenizer, eos_ids
        self.grammars = grammars
        self.prefill_tokens = prefill_tokens
        self._stop_ids = sorted(eos_ids)
        self.forward = PackedForward(wrapped.model, rows, compile)
        self.device = self.forward.device
        self.can_join = True  # our cache always takes rows mid-batch (kept for the scheduler's protocol)
        self.last_size = 0  # choices that got a token in the last step
        self.last_prefill = 0  # prompt tokens prefilled in the last step (0: a pure decode step)
        self.clear()

    def clear(self) -> None:
        """Forget the running batch (its rows, cache rows and queued prompts)."""
        self.forward.cache.reset()
        self._states: list[ChoiceState] = []  # active choices, in batch order
        self._rows: list[_Row] = []  # active virtual rows, in batch order
        self._owner: list[int] = []  # virtual row -> index in _states
        self._joining: list[_Joining] = []  # being prefilled, in arrival order
        self._next: torch.Tensor | None = None  # [vrows] each row's token for the next forward
        self._lora: LoraBatch | None = None  # the active rows' slot weights
        self._mix: torch.Tensor | None = None  # [choices, vrows]; None when every choice is one row of weight 1
        self._spread: torch.Tensor | None = None  # [vrows] owning choice of each row (its token -> its rows)
        self._finished = Finished()

    def __len__(self) -> int:
        return len(self._states) + sum(j.item.params.copies for j in self._joining)

    @property
    def num_rows(self) -> int:
        return len(self._rows) + sum(len(j.rows) * j.item.params.copies for j in self._joining)

    def step(self, joining: list[GenItem] | tuple = ()) -> list[tuple[GenItem, list[GenOutput]]]:
        with torch.inference_mode():
            for it in joining:
                self._queue(it)
            finished = self._drop_cancelled_joiners()
            self.last_size = self.last_prefill = 0
            if not self._rows and not self._joining:
                return finished
            logits = self._run()  # [active vrows, vocab], newly prefilled rows included
            scored_only = [n for n, st in enumerate(self._states) if st.item.params.max_tokens == 0]
            if scored_only:  # echo with max_tokens 0: the prefill was the whole job
                for n in scored_only:
                    self._states[n].finish = "length"
                finished += self._finished.collect([self._states[n] for n in scored_only])
                logits = self._keep([n for n, st in enumerate(self._states) if st.finish is None], logits)
            self.last_size = len(self._states)
            if not self._states:
                return finished
            tokens = sample_step(self._states, logits, self._mix, self.tokenizer, self.eos_ids, self._stop_ids)
            done = [st for st in self._states if st.finish is not None]
            if done:
                keep = [n for n, st in enumerate(self._states) if st.finish is None]
                tokens = tokens[torch.tensor(keep, dtype=torch.long, device=tokens.device)]
                finished += self._finished.collect(done)
                self._keep(keep, None)
            self._next = tokens.to(self.device)[self._spread] if self._states else None  # [vrows]
            return finished

    # ---- joining ------------------------------------------------------------------------------
    def _queue(self, item: GenItem) -> None:
        cache = self.forward.cache
        rows = [_Row(cache.allocate(), slots) for slots in item.rows]
        copies = [[cache.allocate() for _ in item.rows] for _ in range(item.params.copies - 1)]
        self._joining.append(_Joining(item, rows, copies, time.perf_counter()))

    def _drop_cancelled_joiners(self) -> list[tuple[GenItem, list[GenOutput]]]:
        gone = [j for j in self._joining if j.item.cancelled is not None and j.item.cancelled()]
        if not gone:
            return []
        self._joining = [j for j in self._joining if j not in gone]
        states = []
        for j in gone:
            self._release([r.cache_row for r in j.rows] + [c for cs in j.copies for c in cs])
            for st in new_choices(j.item, None, j.joined_at):
                st.finish = "cancelled"
                states.append(st)
        return self._finished.collect(states)

    def _plan(self) -> tuple[StepBatch, PackedLora | None, list[tuple[_Joining, int, int, bool]]]:
        """This step's packed tokens: the active rows' next tokens, then prompt chunks up to the budget.
        Returns the batch, its LoRA layout, and per chunk (joiner, virtual row, tokens, wants all logits)."""
        ids: list[torch.Tensor] = []
        positions: list[torch.Tensor] = []
        rows: list[torch.Tensor] = []
        logits_at: list[torch.Tensor] = []
        n = len(self._rows)
        if n:
            ids.append(self._next)
            positions.append(torch.tensor([r.length for r in self._rows], dtype=torch.long))
            rows.append(torch.tensor([r.cache_row for r in self._rows], dtype=torch.long))
            logits_at.append(torch.arange(n))
        chunks: list[Chunk] = []
        taken: list[tuple[_Joining, int, int, bool]] = []
        budget, offset = self.prefill_tokens, n
        for j in self._joining:
            prompt = j.item.prompt_ids
            scored = j.item.params.prompt_logprobs is not None
            for v, row in enumerate(j.rows):
                if budget <= 0:
                    break
                t = min(len(prompt) - row.length, budget)
                if t <= 0:
                    continue
                start = row.length
                ids.append(torch.tensor(prompt[start : start + t], dtype=torch.long))
                positions.append(torch.arange(start, start + t))
                rows.append(torch.full((t,), row.cache_row, dtype=torch.long))
                last = start + t == len(prompt)
                if scored:
                    logits_at.append(torch.arange(offset, offset + t))
                elif last:
                    logits_at.append(torch.tensor([offset + t - 1]))
                chunks.append(Chunk(row.cache_row, start, t, offset))
                taken.append((j, v, t, scored))
                budget -= t
                offset += t
        dev = self.device
        batch = StepBatch(
            torch.cat(ids).to(dev),
            torch.cat(positions).to(dev),
            torch.cat(rows).to(dev),
            [r.cache_row for r in self._rows],
            chunks,
            torch.cat(logits_at).to(dev) if logits_at else torch.zeros(0, dtype=torch.long, device=dev),
        )
        chunk_rows = [j.rows[v].slots for j, v, _, _ in taken]
        chunk_lora = self.wrapped.lora_batch(chunk_rows) if chunk_rows else None
        lora = None
        if self._lora is not None or chunk_lora is not None:
            lora = PackedLora(self._lora, chunk_lora, n, tuple(t for _, _, t, _ in taken))
        return batch, lora, taken

    def _run(self) -> torch.Tensor:
        """One forward; rows whose prompt it finished join the active set. Returns the active rows' logits."""
        batch, lora, taken = self._plan()
        self.last_prefill = sum(t for _, _, t, _ in taken)
        with self.wrapped.active(lora):
            out = self.forward(batch)  # [outputs, vocab]
        n = len(self._rows)
        for r in self._rows:
            r.length += 1
        logits = out[:n]
        at = n
        for j, v, t, scored in taken:
            row = j.rows[v]
            row.length += t
            if scored:
                j.scored[v].append(out[at : at + t])
                at += t
                if row.length == len(j.item.prompt_ids):
                    j.logits[v] = out[at - 1]
            elif row.length == len(j.item.prompt_ids):
                j.logits[v] = out[at]
                at += 1
        ready = [j for j in self._joining if j.done]
        if ready:
            self._joining = [j for j in self._joining if not j.done]
            logits = torch.cat([logits] + [self._activate(j) for j in ready])
            # one LoRA gather and row layout for all of this step's joiners, not one per joiner
            self._lora = self.wrapped.lora_batch([r.slots for r in self._rows])
            self._reindex()
        return logits

    def _activate(self, j: _Joining) -> torch.Tensor:
        """A fully prefilled request joins the sampling set: its choices' rows (copies get the prompt's cache).
        The caller rebuilds the LoRA gather and the row layout once for every request joining this step."""
        it = j.item
        length = len(it.prompt_ids)
        if it.params.prompt_logprobs is not None:
            mix = torch.tensor(it.mix, device=self.device, dtype=torch.float32)
            per_row = torch.stack([torch.cat(parts).float() for parts in j.scored])  # [vrows, len(ids), vocab]
            mixed = torch.einsum("r,rtv->tv", mix, per_row)  # [len(ids), vocab]
            self._finished.prompt_lp[id(it)] = prompt_logprobs(
                mixed, it.prompt_ids, it.params.prompt_logprobs, self.tokenizer
            )
        for v, src in enumerate(j.rows):  # each virtual row's prompt cache to all its copies at once
            if j.copies:
                self.forward.cache.copy_prefix(src.cache_row, [copy[v] for copy in j.copies], length)
        rows = list(j.rows) + [_Row(copy[v], src.slots, length) for copy in j.copies for v, src in enumerate(j.rows)]
        logits = torch.stack(j.logits * it.params.copies)  # [vrows * copies, vocab]
        self._states += new_choices(it, self.grammars, j.joined_at)
        self._rows += rows
        return logits

    # ---- leaving ------------------------------------------------------------------------------
    def _keep(self, keep: list[int], logits: torch.Tensor | None) -> torch.Tensor | None:
        """Keep only the choices at `keep`; the others' cache rows are freed. Returns their rows' `logits`."""
        kept = set(keep)
        vkeep = [v for v, n in enumerate(self._owner) if n in kept]
        self._release([r.cache_row for v, r in enumerate(self._rows) if self._owner[v] not in kept])
        idx = torch.tensor(vkeep, dtype=torch.long, device=self.device)
        self._rows = [self._rows[v] for v in vkeep]
        self._states = [self._states[n] for n in keep]
        if self._lora is not None:
            self._lora = self._lora.select(idx, self.wrapped.context.next_version()) if vkeep else None
        self._reindex()
        return logits[idx] if logits is not None else None

    def _release(self, cache_rows: list[int]) -> None:
        for row in cache_rows:
            self.forward.cache.release(row)

    def _reindex(self) -> None:
        self._owner, self._spread, self._mix = row_layout(self._states, self.device)
