"""Log probabilities as OpenAI clients read them: the chosen token's, and the most likely tokens at its step.

Both engines report *raw* log probabilities: the model's (or the composition's mixed) distribution before
the grammar mask, bias, penalties or temperature, which is vLLM's default (`logprobs_mode="raw_logprobs"`).
An evaluation harness scoring a continuation needs exactly that, not the sampler's tempered view.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch


@dataclass
class TokenLogprob:
    """One token's log probability and the most likely tokens at its step (best first). The first token of an
    echoed prompt has no log probability (nothing predicts it): `logprob` and `top` are None there."""

    token: str
    logprob: float | None
    top: list[tuple[str, float]] | None = field(default_factory=list)


def _space_marker(tokenizer) -> str | None:
    """The Metaspace replacement character (SentencePiece's "\u2581") whose leading copies `decode` strips, or
    None for tokenizers (byte-level BPE) whose single-token decode keeps spaces. Cached on the tokenizer."""
    cached = getattr(tokenizer, "_loraplex_space_marker", False)
    if cached is not False:
        return cached
    marker = None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        try:
            pre = json.loads(backend.to_str()).get("pre_tokenizer") or {}
        except Exception:
            pre = {}
        for sub in [pre, *pre.get("pretokenizers", [])]:
            if sub.get("type") == "Metaspace":
                marker = sub.get("replacement", "\u2581")
                break
    try:
        tokenizer._loraplex_space_marker = marker
    except AttributeError:
        pass
    return marker


def _completed(tokenizer, tid: int, context: list[int]) -> str:
    """A token that decodes to a partial UTF-8 character alone: its text given up to 4 preceding tokens (the
    text the character completes), or "" while the character is still incomplete. Byte-fallback pieces then
    concatenate to the decoded text, as in vLLM's logprobs."""
    for k in range(1, min(len(context), 4) + 1):
        ctx = context[-k:]
        full = tokenizer.decode(ctx + [tid])
        if full.endswith("\ufffd"):
            continue
        clean = len(ctx)
        while clean > 0 and tokenizer.decode([ctx[clean - 1]]).endswith("\ufffd"):
            clean -= 1
        prefix = tokenizer.decode(ctx[:clean]) if clean else ""
        if full.startswith(prefix):
            return full[len(prefix) :]
        common = 0
        for x, y in zip(prefix, full):
            if x != y:
                break
            common += 1
        return full[common:]
    return ""


def token_texts(tokenizer, ids: list[int], context: list[int] | None = None) -> list[str]:
    """Each token decoded alone, as vLLM reports them: leading spaces that SentencePiece's `decode` drops put
    back, and (given the preceding tokens `context`) partial UTF-8 pieces resolved against it."""
    marker = _space_marker(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(ids) if marker else [None] * len(ids)
    out = []
    for tid, piece in zip(ids, pieces):
        text = tokenizer.decode([tid]) or ""
        if marker and isinstance(piece, str):
            lead = len(piece) - len(piece.lstrip(marker))
            missing = lead - (len(text) - len(text.lstrip(" ")))
            text = " " * missing + text if missing > 0 else text
        if context is not None and text.endswith("\ufffd"):
            text = _completed(tokenizer, tid, context)
        out.append(text)
    return out


def step_logprobs(
    logprobs: torch.Tensor, chosen: torch.Tensor, k: int, tokenizer, contexts: list[list[int]]
) -> list[TokenLogprob]:
    """`logprobs: [rows, vocab]` (log-softmaxed), `chosen: [rows]` -> one entry per row with its top `k`;
    `contexts[r]` are row r's tokens before this one (for partial UTF-8 pieces)."""
    picked = logprobs.gather(1, chosen[:, None].long())[:, 0].tolist()  # [rows]
    top_lp, top_ids = logprobs.topk(k, dim=-1) if k else (None, None)  # [rows, k]
    out = []
    for r, tid in enumerate(chosen.tolist()):
        ids = [tid, *(top_ids[r].tolist() if k else [])]
        texts = token_texts(tokenizer, ids, contexts[r])
        top = list(zip(texts[1:], top_lp[r].tolist())) if k else []
        out.append(TokenLogprob(texts[0], picked[r], top))
    return out


def prompt_logprobs(logits: torch.Tensor, ids: list[int], k: int, tokenizer) -> list[TokenLogprob]:
    """`logits: [len(ids), vocab]`, position t predicting token t + 1 -> one entry per prompt token, the first
    without a log probability."""
    first = TokenLogprob(token_texts(tokenizer, ids[:1])[0], None, None)
    if len(ids) == 1:
        return [first]
    lp = torch.log_softmax(logits[:-1].float(), dim=-1)  # [len(ids) - 1, vocab]
    # the context of position t is the prompt tokens 1..t-1: the first token has no entry (vLLM's rule)
    contexts = [ids[1:t] for t in range(1, len(ids))]
    return [first, *step_logprobs(lp, torch.tensor(ids[1:]), k, tokenizer, contexts)]
