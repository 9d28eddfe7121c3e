"""Unit-test fixtures: a tiny random Llama, a byte-level BPE tokenizer and real PEFT adapters on disk.

Unit tests must never start Ray: `ray.init` raises here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _no_ray():
    try:
        import ray
    except ImportError:  # pragma: no cover
        yield
        return
    original = ray.init

    def refuse(*a, **k):
        raise RuntimeError("unit tests must not start Ray; put this test under tests/integration")

    ray.init = refuse
    yield
    ray.init = original


CORPUS = [
    "hello world, my order ORD-12345 never arrived and I am upset",
    "please reset my password for jane.doe@example.com",
    "the invoice was charged twice, refund me",
    "great service, thank you so much!",
    "Classify the intent. Answer: billing order_status cancel_order",
] * 20


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="left"
    )


def make_base(path: Path, seed: int = 0, hidden: int = 64) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_adapter(base_dir: Path, out: Path, seed: int, r: int = 4, targets=("q_proj", "v_proj"), **extra) -> Path:
    """A real PEFT adapter with non-zero B (init_lora_weights=False), scaled up so it changes outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    cfg = LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False, task_type="CAUSAL_LM", **extra
    )
    model = get_peft_model(base, cfg)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """{'base': path, 'roots': path} with adapters a (r4 q,v), b (r8 all linears, rslora), c (r2, alpha_pattern)."""
    root = tmp_path_factory.mktemp("tiny")
    base = make_base(root / "base")
    adapters = root / "adapters"
    make_adapter(base, adapters / "a", seed=1, r=4)
    make_adapter(
        base,
        adapters / "b",
        seed=2,
        r=8,
        targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        use_rslora=True,
    )
    make_adapter(base, adapters / "c", seed=3, r=2, targets=("o_proj", "down_proj"), alpha_pattern={"down_proj": 7})
    return {"base": base, "roots": adapters}


@pytest.fixture(scope="session")
def engine(tiny):
    from loraplex.config.engine import EngineConfig
    from loraplex.experts.engine import Engine

    return Engine.from_config(
        EngineConfig(
            base_model=str(tiny["base"]),
            adapter_roots=[str(tiny["roots"])],
            max_slots=4,
            max_host_adapters=8,
            max_rank=16,
        )
    )


def peft_model(tiny, names=("a", "b", "c")):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny["base"])
    model = PeftModel.from_pretrained(base, tiny["roots"] / names[0], adapter_name=names[0])
    for n in names[1:]:
        model.load_adapter(tiny["roots"] / n, adapter_name=n)
    return model.eval()


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj))


HUB_SHA = "0123456789abcdef0123456789abcdef01234567"


def make_hub_cache(cache: Path, repo: str, adapter: Path, revision_ref: str = "main") -> Path:
    """`adapter`'s files in the huggingface_hub cache layout (refs/<ref>, blobs/, snapshots/<sha>/ symlinks), as
    `huggingface-cli download` leaves them: hub references then resolve offline. Returns the snapshot folder."""
    import os
    import shutil

    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / revision_ref).write_text(HUB_SHA)
    snap, blobs = folder / "snapshots" / HUB_SHA, folder / "blobs"
    snap.mkdir(parents=True, exist_ok=True)
    blobs.mkdir(exist_ok=True)
    for f in adapter.iterdir():
        if f.is_file():
            blob = blobs / f"blob-{f.name}"
            shutil.copy(f, blob)
            os.symlink(os.path.relpath(blob, snap), snap / f.name)
    return snap
