"""Logits processing between the model and the token choice, in vLLM's order, so a field means the same on
both engines: `allowed_token_ids`, grammar mask, `logit_bias`, `min_tokens` (stop tokens masked), then
repetition, frequency and presence penalties. Temperature, `min_p`, top-k and top-p follow in the sampler
(`experts.sampling.choose_tokens`); greedy rows take the argmax of the processed logits.

Penalties follow vLLM's definitions: repetition divides positive logits (multiplies negative ones) of every
token seen in the prompt or the output; frequency subtracts `penalty x count` and presence `penalty` for each
token in the output so far.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loraplex.experts.sampling import SamplingParams
from loraplex.experts.structured import Grammar


@dataclass
class RowContext:
    """What processing needs to know about one sampled row."""

    params: SamplingParams
    prompt_ids: list[int]
    output_ids: list[int]  # generated so far (EOS never among them)
    grammar: Grammar | None = None


def needs_processing(p: SamplingParams) -> bool:
    return bool(
        p.logit_bias
        or p.min_tokens
        or p.repetition_penalty != 1.0
        or p.frequency_penalty
        or p.presence_penalty
        or p.structured is not None
        or p.allowed_token_ids is not None
    )


def process_logits(logits: torch.Tensor, rows: list[RowContext], stop_ids: list[int]) -> torch.Tensor:
    """`logits: [rows, vocab]` float32, processed in place for the rows that ask for it."""
    vocab = logits.shape[1]
    for i, r in enumerate(rows):
        p = r.params
        if not needs_processing(p):
            continue
        row = logits[i]  # [vocab], a view
        if p.allowed_token_ids is not None:
            keep = torch.zeros_like(row, dtype=torch.bool)
            keep[torch.tensor(p.allowed_token_ids, dtype=torch.long, device=row.device)] = True
            row.masked_fill_(~keep, float("-inf"))
        if r.grammar is not None:
            r.grammar.mask(row)
        if p.logit_bias:
            ids = torch.tensor([t for t, _ in p.logit_bias], device=row.device)
            row.index_add_(0, ids, torch.tensor([b for _, b in p.logit_bias], device=row.device, dtype=row.dtype))
        if p.min_tokens and len(r.output_ids) < p.min_tokens:
            stops = [*stop_ids, *p.stop_token_ids]
            row[torch.tensor(stops, dtype=torch.long, device=row.device)] = float("-inf")
        if p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
            out = torch.tensor(r.output_ids, dtype=torch.long, device=row.device)
            counts = torch.bincount(out, minlength=vocab)[:vocab].to(row.dtype)  # [vocab]
            if p.repetition_penalty != 1.0:
                seen = counts > 0
                seen[torch.tensor(r.prompt_ids, dtype=torch.long, device=row.device)] = True
                rp = p.repetition_penalty
                row.copy_(torch.where(seen, torch.where(row > 0, row / rp, row * rp), row))
            if p.frequency_penalty:
                row -= p.frequency_penalty * counts
            if p.presence_penalty:
                row -= p.presence_penalty * (counts > 0).to(row.dtype)
    return logits
