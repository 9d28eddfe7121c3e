"""The benchmarks' model: a random Llama-shaped base, a word-level tokenizer and N rank-r PEFT adapters on disk.

Random weights because the benchmarks measure compute, not quality, and a seeded build needs no download.
The engine benchmark and the serving benchmark build the same fixture (at different sizes), so their numbers
describe the same kind of model. Adapters use `init_lora_weights=False` plus fresh N(0, 0.02) LoRA weights each,
so every adapter really changes the output (a default PEFT init would be a no-op).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FixtureSpec:
    """Shape of the bench model and its adapters; `seed` fixes every weight."""

    hidden: int
    layers: int
    vocab: int
    rank: int
    targets: tuple[str, ...]
    seed: int = 0

    @property
    def heads(self) -> int:
        return max(1, self.hidden // 64)

    @property
    def intermediate(self) -> int:
        return int(self.hidden * 2.75)


def adapter_names(n: int) -> list[str]:
    """The adapter names `build_fixture` writes (its folder names under the adapter root): a0 .. a{n-1}."""
    return [f"a{i}" for i in range(n)]


def llama_config(vocab: int, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, positions: int):
    """The bench models' Llama config (ids 0/1/2 = pad/bos/eos, as the word-level tokenizers below)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=positions,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def build_fixture(spec: FixtureSpec, root: Path, n_adapters: int) -> tuple[Path, Path]:
    """Write base model + tokenizer to root/base, `n_adapters` adapters to root/adapters/aN; (base, adapter root)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, models
    from tqdm import tqdm
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(spec.seed)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, spec.vocab)}}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side="left",
    )
    cfg = llama_config(spec.vocab, spec.hidden, spec.intermediate, spec.layers, spec.heads, spec.heads, 1024)
    base_dir, ad_dir = root / "base", root / "adapters"
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    lora = LoraConfig(r=spec.rank, lora_alpha=2 * spec.rank, target_modules=list(spec.targets), init_lora_weights=False)
    peft = get_peft_model(model, lora)
    for name in tqdm(adapter_names(n_adapters), desc="writing adapters"):
        with torch.no_grad():
            for pname, p in peft.named_parameters():
                if "lora_" in pname:
                    p.normal_(0, 0.02)
        peft.save_pretrained(ad_dir / name)
    return base_dir, ad_dir
