"""Decoding loop over one mixed batch: per-row adapters, logits-space blends, per-row stopping.

Why not HF `generate`: a batch here mixes sampling settings, stop strings and composition modes per
row, and a logits-space blend needs several *virtual rows* (base + one per adapter) whose logits are
mixed into one token each step. The loop below keeps one KV cache for all virtual rows, drops rows
from the batch (cache, mask and LoRA gather) as soon as their request finishes, and streams text
deltas through a per-request callback. The batched LoRA layers also work under HF `generate`
(tested), this loop just needs more per-row control.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import DynamicCache

from experts.multi_lora import WrappedModel
from experts.sampling import SamplingParams, choose_tokens

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
            st.item.on_token(st.text[st.emitted:safe])
            st.emitted = safe


def generate(wrapped: WrappedModel, tokenizer, items: list[GenItem], eos_ids: set[int], pad_id: int) -> list[GenOutput]:
    """Decode all `items` together; returns one `GenOutput` per item, in order."""
    if not items:
        return []
    model = wrapped.model
    device = next(model.parameters()).device
    states = [
        _State(it, None if it.params.greedy else torch.Generator().manual_seed(it.params.seed if it.params.seed is not None else random.getrandbits(63)))
        for it in items
    ]
    owner = [i for i, it in enumerate(items) for _ in it.rows]  # virtual row -> item
    rows = [r for it in items for r in it.rows]
    mixed = any(len(it.rows) > 1 for it in items)
    mix_full = torch.zeros(len(items), len(rows), device=device)  # [items, vrows]
    j = 0
    for i, it in enumerate(items):
        for m in it.mix:
            mix_full[i, j] = m
            j += 1

    width = max(len(it.prompt_ids) for it in items)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for v, i in enumerate(owner):
        ids = items[i].prompt_ids
        input_ids[v, width - len(ids):] = torch.tensor(ids)
        mask[v, width - len(ids):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [vrows, width]

    active = list(range(len(items)))  # item indices still decoding
    vrows = torch.arange(len(rows), device=device)  # original index of each current virtual row
    cache = DynamicCache()
    with torch.inference_mode(), wrapped.batch(rows):
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1)
        last_pos = positions[:, -1]
        while True:
            logits = out.logits[:, -1, :].float()  # [vrows, vocab]
            if mixed:
                logits = mix_full[active][:, vrows] @ logits  # [items, vocab]
            tokens = choose_tokens(logits, [states[i].item.params for i in active], [states[i].generator for i in active])
            for i, t in zip(active, tokens.tolist()):
                _advance(states[i], t, tokenizer, eos_ids)
                cancelled = states[i].item.cancelled
                if states[i].finish is None and cancelled is not None and cancelled():
                    states[i].finish = "cancelled"
            still = [n for n, i in enumerate(active) if states[i].finish is None]
            if not still:
                break
            if len(still) < len(active):
                keep_items = {active[n] for n in still}
                keep = torch.tensor([v for v, orig in enumerate(vrows.tolist()) if owner[orig] in keep_items], device=device)
                cache.batch_select_indices(keep)
                mask, last_pos, vrows = mask[keep], last_pos[keep], vrows[keep]
                wrapped.select_rows(keep)
                tokens = tokens[torch.tensor(still, device=tokens.device)]
                active = [active[n] for n in still]
            item_pos = {i: n for n, i in enumerate(active)}
            next_ids = tokens[torch.tensor([item_pos[owner[v]] for v in vrows.tolist()], device=tokens.device)][:, None]  # [vrows, 1]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            last_pos = last_pos + 1
            out = model(input_ids=next_ids, attention_mask=mask, position_ids=last_pos[:, None], past_key_values=cache, use_cache=True)
    return [
        GenOutput(st.text, st.ids, st.finish or "length", len(st.item.prompt_ids), st.steps) for st in states
    ]
