"""Log probabilities as OpenAI clients read them: the chosen token's, and the most likely tokens at its step.

Both engines report *raw* log probabilities: the model's (or the composition's mixed) distribution before
the grammar mask, bias, penalties or temperature, which is vLLM's default (`logprobs_mode="raw_logprobs"`).
An evaluation harness scoring a continuation needs exactly that, not the sampler's tempered view.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TokenLogprob:
    """One token's log probability and the most likely tokens at its step (best first). The first token of an
    echoed prompt has no log probability (nothing predicts it): `logprob` and `top` are None there."""

    token: str
    logprob: float | None
    top: list[tuple[str, float]] | None = field(default_factory=list)


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """Each token decoded alone, with the leading space SentencePiece's `decode` drops put back (as vLLM does),
    so that the token strings of a text concatenate to the text."""
    pieces = tokenizer.convert_ids_to_tokens(ids)
    out = []
    for tid, piece in zip(ids, pieces):
        text = tokenizer.decode([tid])
        if isinstance(piece, str) and piece.startswith("\u2581") and not text.startswith(" "):
            text = " " + text
        out.append(text)
    return out


def step_logprobs(logprobs: torch.Tensor, chosen: torch.Tensor, k: int, tokenizer) -> list[TokenLogprob]:
    """`logprobs: [rows, vocab]` (log-softmaxed), `chosen: [rows]` -> one entry per row with its top `k`."""
    picked = logprobs.gather(1, chosen[:, None].long())[:, 0].tolist()  # [rows]
    top_lp, top_ids = logprobs.topk(k, dim=-1) if k else (None, None)  # [rows, k]
    chosen_text = token_texts(tokenizer, chosen.tolist())
    out = []
    for r in range(logprobs.shape[0]):
        top: list[tuple[str, float]] = []
        if k:
            top = list(zip(token_texts(tokenizer, top_ids[r].tolist()), top_lp[r].tolist()))
        out.append(TokenLogprob(chosen_text[r], picked[r], top))
    return out


def prompt_logprobs(logits: torch.Tensor, ids: list[int], k: int, tokenizer) -> list[TokenLogprob]:
    """`logits: [len(ids), vocab]`, position t predicting token t + 1 -> one entry per prompt token, the first
    without a log probability."""
    first = TokenLogprob(token_texts(tokenizer, ids[:1])[0], None, None)
    if len(ids) == 1:
        return [first]
    lp = torch.log_softmax(logits[:-1].float(), dim=-1)  # [len(ids) - 1, vocab]
    return [first, *step_logprobs(lp, torch.tensor(ids[1:]), k, tokenizer)]
