"""The joint trainer's mixer wraps exactly the layers the engine would: one public target rule."""

from __future__ import annotations

import pytest
import torch

from loraplex.demo.joint_training import LoraMixer, MixedLoraLinear
from loraplex.experts.lora.targets import target_linears


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval()


def test_mixer_wraps_what_target_linears_selects():
    for patterns in (("q_proj", "v_proj"), ("model.layers.1.mlp.*",), ("lm_head", "o_proj")):
        want = set(target_linears(_llama(), patterns))
        mixer = LoraMixer(_llama(), ["a", "b"], r=2, alpha=4, target_modules=patterns)
        assert set(mixer.layers) == want and want
        assert all(isinstance(m, MixedLoraLinear) for m in mixer.layers.values())
    assert not any(name.endswith("lm_head") for name in mixer.layers)  # the output head is never a LoRA target


def test_mixer_rejects_patterns_that_match_nothing():
    with pytest.raises(ValueError, match="match no nn.Linear"):
        LoraMixer(_llama(), ["a"], r=2, alpha=4, target_modules=("nope",))
