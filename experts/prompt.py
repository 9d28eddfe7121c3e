"""Prompt text or token ids -> checked token ids: the one tokenization both engines use, so a prompt means the
same tokens whichever engine serves it (the vLLM engine is handed ids, never text)."""

from __future__ import annotations

from loraplex.experts.errors import RequestError


def encode_prompt(tokenizer, prompt: str | list[int], max_tokens: int, max_positions: int) -> list[int]:
    """Token ids of a prompt, checked against the vocabulary and the model's context length."""
    if isinstance(prompt, str):
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as e:  # e.g. a lone UTF-16 surrogate: the tokenizer would raise a TypeError
            raise RequestError(f"prompt is not valid Unicode text ({e.reason} at index {e.start})") from None
        ids = tokenizer(prompt)["input_ids"]
    else:
        vocab = len(tokenizer)
        if not prompt or not all(isinstance(t, int) and 0 <= t < vocab for t in prompt):
            raise RequestError(f"prompt token ids must be a non-empty list of integers in [0, {vocab})")
        ids = list(prompt)
    if not ids:
        raise RequestError("prompt is empty after tokenization")
    if len(ids) + max_tokens > max_positions:
        raise RequestError(
            f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's context "
            f"of {max_positions} tokens"
        )
    return ids
