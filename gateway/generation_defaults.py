"""Sampling defaults from the base model's `generation_config.json`, the way vLLM's `--generation-config auto`
(its default) reads them: a field the request leaves out takes the model's value, else OpenAI's default
(temperature 1.0, top_p 1.0, no top-k, no min_p, no repetition penalty). A model whose card asks for
temperature 0.6 gets 0.6; nobody gets silent greedy decoding they did not ask for."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

OPENAI_DEFAULTS: dict[str, float] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
}


def generation_defaults(base_model: str) -> dict[str, float]:
    """The sampling fields the model's generation config sets, over OpenAI's defaults."""
    from transformers import GenerationConfig

    try:
        diff = GenerationConfig.from_pretrained(base_model).to_diff_dict()
    except OSError:  # no generation_config.json: OpenAI's defaults
        return dict(OPENAI_DEFAULTS)
    found = {k: diff[k] for k in OPENAI_DEFAULTS if diff.get(k) is not None}
    if found:
        log.info("sampling defaults from %s/generation_config.json: %s", base_model, found)
    return {**OPENAI_DEFAULTS, **found}
